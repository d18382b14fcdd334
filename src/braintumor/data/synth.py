"""A small, deterministic, learnable MRI-like data set for the quickstart and the tests.

Each image is a dark background with a textured elliptical "brain". The tumour classes differ
the way the real ones tend to: glioma is a large irregular ring-enhancing mass inside the brain,
meningioma a bright round mass touching the brain's edge, pituitary a small bright mass at the
bottom centre (the sella), and no_tumor has none. Position, size and brightness are jittered so a
model must learn the pattern rather than a pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from braintumor.core.atomic import atomic_output
from braintumor.core.errors import UserError

CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


def _brain(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size * (0.5 + rng.uniform(-0.04, 0.04, 2))
    ry, rx = size * rng.uniform(0.36, 0.42), size * rng.uniform(0.30, 0.36)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    texture = rng.normal(0.0, 1.0, (size // 8 + 1, size // 8 + 1))
    texture = np.kron(texture, np.ones((8, 8)))[:size, :size]
    image = np.where(inside, 95 + 18 * texture + rng.normal(0, 6, (size, size)), 4.0)
    return image.astype(np.float32), (cy, cx, ry, rx)


def _blob(size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.clip(1.0 - np.hypot(yy - cy, xx - cx) / radius, 0.0, 1.0) ** 0.5


def make_image(label: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One grayscale uint8 image of the given class."""
    image, (cy, cx, ry, rx) = _brain(rng, size)
    if label == "glioma_tumor":
        ty = cy + rng.uniform(-0.35, 0.1) * ry
        tx = cx + rng.choice([-1, 1]) * rng.uniform(0.1, 0.35) * rx
        radius = size * rng.uniform(0.13, 0.18)
        ring = _blob(size, ty, tx, radius) - 0.8 * _blob(size, ty, tx, radius * 0.55)
        image += 120 * ring
    elif label == "meningioma_tumor":
        angle = rng.uniform(-np.pi * 0.9, -np.pi * 0.1)  # upper half, touching the edge
        ty, tx = cy + 0.92 * ry * np.sin(angle), cx + 0.92 * rx * np.cos(angle)
        image += 150 * _blob(size, ty, tx, size * rng.uniform(0.09, 0.13))
    elif label == "pituitary_tumor":
        ty, tx = cy + 0.62 * ry, cx + rng.uniform(-0.05, 0.05) * rx
        image += 140 * _blob(size, ty, tx, size * rng.uniform(0.06, 0.08))
    elif label != "no_tumor":
        raise ValueError(f"unknown synthetic class {label!r}")
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(
    dest: str | Path,
    train_per_class: int = 60,
    test_per_class: int = 20,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write ``dest/{Training,Testing}/<class>/synth_NNNN.jpg``; the same arguments give the same bytes."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest} exists and is not empty; choose an empty or new destination")
    with atomic_output(dest, folder=True) as tmp:  # replaces an empty dest; nothing half-written on failure
        splits = (("Training", train_per_class, seed), ("Testing", test_per_class, seed + 1))
        for split, per_class, split_seed in splits:
            for class_index, label in enumerate(CLASSES):
                folder = tmp / split / label
                folder.mkdir(parents=True)
                rng = np.random.default_rng([split_seed, class_index])
                for i in range(per_class):
                    Image.fromarray(make_image(label, rng, size)).save(folder / f"synth_{i:04d}.jpg", quality=92)
    return dest
