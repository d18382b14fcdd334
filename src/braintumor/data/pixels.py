"""How a braintumor model's input is made from an image file: decode, optional brain crop, resize,
optional intensity normalisation (standardize or equalize), giving a (size, size, 3) uint8 RGB array in [0, 255].

This is the one definition of decoding: training, evaluation and `braintumor predict` call
`decode_image`, and `braintumor export` copies this file unchanged into every export folder (as
decode.py), so that an exported model can be fed exactly as it was trained without braintumor.
It needs only numpy and Pillow; keep it that way (tests/test_export.py runs the copy in isolation).

    from decode import decode_image
    image = decode_image("scan.jpg", size=224, preprocess=["brain_crop", "standardize"])
    batch = image[None].astype("float32")  # (1, size, size, 3), what the model takes

`size` and `preprocess` are the export's model_card.json `input.image_size` and `input.preprocessing`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

PREPROCESS_STEPS = ("brain_crop", "standardize", "equalize")  # in the order decode_image applies them
# what a damaged, hostile or unsupported image file raises while it is opened or decoded
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextlib.contextmanager
def open_image(source: str | Path | IO[bytes]) -> Iterator[Image.Image]:
    """PIL's Image.open, with images above PIL's pixel limit refused (DecompressionBombWarning raised,
    not just printed) so a decompression bomb is skipped like any unreadable file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            yield image


def to_8bit(image: Image.Image, mode: str) -> Image.Image:
    """`image.convert(mode)` ("RGB" or "L"), with 16-bit and 32-bit gray images scaled into 0-255 by their
    own maximum (PIL would clip them, saturating almost every pixel of a 16-bit scan)."""
    if image.mode.startswith(("I", "F")):
        values = np.asarray(image, dtype=np.float64)
        values = values - min(float(values.min()), 0.0)
        peak = float(values.max())
        gray = np.round(values * (255.0 / peak)) if peak > 0 else np.zeros_like(values)
        image = Image.fromarray(gray.astype(np.uint8))
    return image.convert(mode)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of True pixels, in raster order: their row, first column and end column."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return rows, starts, ends


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4-connected components of `mask` as runs: row, start, end and component of each run; a component
    is named by its first run in raster order, so components are ordered as scipy.ndimage.label numbers them."""
    rows, starts, ends = _runs(mask)
    stride = mask.shape[1] + 1  # row * stride + column orders all runs by row, then column
    # the runs of the next row that share a column with run i are a contiguous slice [first[i], stop[i])
    first = np.searchsorted(rows * stride + ends, (rows + 1) * stride + starts, side="right")
    stop = np.searchsorted(rows * stride + starts, (rows + 1) * stride + ends, side="left")
    counts = np.maximum(stop - first, 0)
    upper = np.repeat(np.arange(len(rows)), counts)
    lower = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(first, counts)
    parent = list(range(len(rows)))  # union-find over the runs; a union is named by its smaller run
    for a, b in zip(upper.tolist(), lower.tolist(), strict=True):
        while parent[a] != a:
            a = parent[a]
        while parent[b] != b:
            b = parent[b]
        if a < b:
            parent[b] = a
        elif b < a:
            parent[a] = b
    for i in range(len(parent)):  # a parent has a smaller index, so it already points at its root
        parent[i] = parent[parent[i]]
    return rows, starts, ends, np.asarray(parent, dtype=np.intp)


def _paint(shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    edges = np.zeros((shape[0], shape[1] + 1), np.int32)
    np.add.at(edges, (rows, starts), 1)
    np.add.at(edges, (rows, ends), -1)
    return np.cumsum(edges, axis=1)[:, :-1] > 0


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` plus the background regions that no 4-connected background path links to the image border."""
    rows, starts, ends, component = _components(~mask)
    on_border = (rows == 0) | (rows == mask.shape[0] - 1) | (starts == 0) | (ends == mask.shape[1])
    outside = np.isin(component, component[on_border])
    return ~_paint(mask.shape, rows[outside], starts[outside], ends[outside])


def brain_mask(gray: np.ndarray) -> np.ndarray:
    """The largest bright 4-connected region, holes filled: the brain against the dark MRI background.

    Bright means above max(10, 0.1 x the 99th percentile of `gray`); of equally large regions the first
    in raster order wins. With no bright pixel the mask is the whole image.
    """
    threshold = max(10.0, 0.1 * float(np.percentile(gray, 99)))
    rows, starts, ends, component = _components(gray > threshold)
    if len(rows) == 0:
        return np.ones_like(gray, dtype=bool)
    largest = int(np.argmax(np.bincount(component, weights=ends - starts)))
    keep = component == largest
    return _fill_holes(_paint(gray.shape, rows[keep], starts[keep], ends[keep]))


def brain_crop(rgb: np.ndarray) -> np.ndarray:
    """The brain mask's bounding box plus a margin of 3 % of the longer side, centred on a black square."""
    mask = brain_mask(rgb.mean(axis=2))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    margin = int(0.03 * max(mask.shape))
    top, bottom = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])
    left, right = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])
    crop = rgb[top:bottom, left:right]
    side = max(crop.shape[:2])
    square = np.zeros((side, side, 3), dtype=rgb.dtype)
    y, x = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return square


def standardize(rgb: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the brain, mapped back to [0, 255] (127.5 + 42.5 z, so ±3 σ), with
    the background outside the brain mask set to 0."""
    gray = rgb.mean(axis=2)
    mask = brain_mask(gray)
    mean, std = gray[mask].mean(), gray[mask].std() + 1e-6
    z = (rgb.astype(np.float32) - mean) / std
    out = np.clip(127.5 + 42.5 * z, 0, 255)
    out[~mask] = 0
    return out.astype(np.uint8)


def equalize(rgb: np.ndarray) -> np.ndarray:
    """Histogram equalisation over the brain (Pillow's ImageOps.equalize with the brain mask), the background
    outside the mask set to 0: the brain's intensities spread evenly over 0-255 whatever the scanner's contrast
    curve, where standardize matches only their mean and spread and keeps the histogram's shape."""
    mask = brain_mask(rgb.mean(axis=2))
    out = np.array(ImageOps.equalize(Image.fromarray(rgb), mask=Image.fromarray(mask)))
    out[~mask] = 0
    return out


def decode_image(path: str | Path | IO[bytes], size: int, preprocess: list[str]) -> np.ndarray:
    """One image file → (size, size, 3) uint8 RGB in [0, 255], with the steps of `preprocess` applied."""
    with open_image(path) as image:
        image.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale (1/2, 1/4, 1/8), much faster
        rgb = np.asarray(to_8bit(image, "RGB"))
    return prepare(rgb, size, preprocess)


def prepare(rgb: np.ndarray, size: int, preprocess: list[str]) -> np.ndarray:
    """Decoded 8-bit pixels ((height, width, 3) RGB, or (height, width) gray, copied into R, G and B) → the
    model's (size, size, 3) uint8 input: the steps after decoding, shared by every file format."""
    unknown = set(preprocess) - set(PREPROCESS_STEPS)
    if unknown:
        raise ValueError(f"unknown preprocessing step(s) {sorted(unknown)}; known: {', '.join(PREPROCESS_STEPS)}")
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if "brain_crop" in preprocess:
        rgb = brain_crop(rgb)
    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    if "standardize" in preprocess:
        rgb = standardize(rgb)
    if "equalize" in preprocess:
        rgb = equalize(rgb)
    return rgb


def describe_decoding(size: int, preprocess: list[str]) -> list[str]:
    """`decode_image(path, size, preprocess)` in words, step by step (for an export's model card)."""
    steps = [
        f"open with Pillow; a JPEG is decoded in draft mode, image.draft('RGB', ({2 * size}, {2 * size})): at the "
        "smallest of the scales 1/8, 1/4, 1/2, 1 that keeps both sides at least that large; other formats at full size",
        "convert to 8-bit RGB: 16-bit and 32-bit images (Pillow modes I;16, I, F) are first shifted so that no value "
        "is negative, multiplied by 255 / their maximum and rounded to 8-bit gray; then Pillow's convert('RGB') "
        "(gray copied into R, G and B; alpha dropped; palettes expanded)",
    ]
    if "brain_crop" in preprocess:
        steps.append("brain_crop: brain mask = the largest 4-connected region of pixels whose mean over R, G, B "
                     "exceeds max(10, 0.1 x its 99th percentile) (first in raster order on a tie; the whole image "
                     "if none), holes filled; cut its bounding box plus a margin of int(0.03 x the longer side) "
                     "pixels, clipped to the image, and centre it on a black square of the longer side")
    steps.append(f"resize to {size} x {size} with Pillow's Image.resize(({size}, {size}), Image.BILINEAR), "
                 "which averages over the source pixels when shrinking (another filter, such as Pillow's "
                 "default BICUBIC, or skipping the draft step, gives other pixels and other probabilities)")
    if "standardize" in preprocess:
        steps.append("standardize: brain mask of the resized image as in brain_crop; with mean m and standard "
                     "deviation s of the per-pixel R, G, B mean inside the mask, each channel value v becomes "
                     "clip(127.5 + 42.5 (v - m) / (s + 1e-6), 0, 255) inside the mask and 0 outside, "
                     "truncated to uint8")
    if "equalize" in preprocess:
        steps.append("equalize: brain mask of the resized image as in brain_crop; Pillow's ImageOps.equalize(image, "
                     "mask) (a lookup table per channel from the histogram of the pixels inside the mask), then 0 "
                     "outside the mask")
    steps.append(f"the result is ({size}, {size}, 3) uint8 RGB; cast to float32 and stack to (N, {size}, {size}, 3)")
    return steps
