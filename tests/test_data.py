"""Data loading on real files: discovery, errors, image formats, cache, split, preprocessing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import REAL_DATA, needs_real_data
from PIL import Image
from scipy import ndimage

from braintumor.core.config import parse_config
from braintumor.core.errors import UserError
from braintumor.data import decode as data_module
from braintumor.data.dataset import load_dataset
from braintumor.data.pixels import brain_mask, decode_image
from braintumor.data.synth import make_image


def _config(root, tmp_path, **data):
    return parse_config({"data": {"root": str(root), "image_size": 32, "val_fraction": 0.25,
                                  "cache_dir": str(tmp_path / "cache"), **data},
                         "model": {"backbone": "simple_cnn", "weights": "none"}}, "test")


@pytest.fixture
def root(tmp_path, synth_root):
    copy = tmp_path / "copy"
    shutil.copytree(synth_root, copy)
    return copy


def test_counts_split_and_validation_are_stratified_and_seeded(root, tmp_path):
    dataset = load_dataset(_config(root, tmp_path))
    assert dataset.classes == ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    summary = dataset.summary()
    assert summary["on_disk"]["Training"]["total"] == 64 and summary["on_disk"]["Testing"]["total"] == 24
    assert summary["counts"]["validation"] == {c: 4 for c in dataset.classes} | {"total": 16}
    assert not set(dataset.val.files) & set(dataset.train.files)
    assert all(f.startswith("Training/") for f in dataset.val.files)
    assert dataset.train.images.shape == (48, 32, 32, 3) and dataset.train.images.dtype == np.uint8
    assert load_dataset(_config(root, tmp_path)).val.files == dataset.val.files
    other_seed = _config(root, tmp_path)
    other_seed.seed = 7
    assert load_dataset(other_seed).val.files != dataset.val.files


def test_image_formats_modes_and_ignored_files(root, tmp_path):
    folder = root / "Training" / "no_tumor"
    gray = make_image("no_tumor", np.random.default_rng(1), 40)
    Image.fromarray(gray).save(folder / "upper.PNG")
    Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 255)])).save(folder / "rgba.png")
    Image.fromarray(gray).convert("RGB").save(folder / "scan.BMP")
    (folder / "notes.txt").write_text("not an image")
    dataset = load_dataset(_config(root, tmp_path))
    files = dataset.train.files + dataset.val.files
    assert {"Training/no_tumor/upper.PNG", "Training/no_tumor/rgba.png", "Training/no_tumor/scan.BMP"} <= set(files)
    assert dataset.summary()["ignored_non_image_files"] == ["Training/no_tumor/notes.txt"]


def test_corrupt_images_are_skipped_and_listed_or_fail_when_strict(root, tmp_path):
    good = (root / "Training" / "glioma_tumor" / "synth_0000.jpg").read_bytes()
    (root / "Training" / "glioma_tumor" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "Training" / "glioma_tumor" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    dataset = load_dataset(_config(root, tmp_path))
    assert sorted(s["file"] for s in dataset.skipped) == ["Training/glioma_tumor/garbage.jpg",
                                                          "Training/glioma_tumor/truncated.jpg"]
    assert len(dataset.train.files) + len(dataset.val.files) == 64
    with pytest.raises(UserError, match="cannot read image .*(garbage|truncated).*data.strict"):
        load_dataset(_config(root, tmp_path, strict=True, cache_dir=str(tmp_path / "cache2")))


@pytest.mark.parametrize("breakage, message", [
    (lambda root: shutil.rmtree(root), "data root .* not found; set data.root"),
    (lambda root: shutil.rmtree(root / "Testing"), "split folder .*Testing not found"),
    (lambda root: shutil.rmtree(root / "Testing" / "no_tumor"), "Testing lacks class folder no_tumor"),
    (lambda root: (root / "Testing" / "astrocytoma").mkdir(), "Testing has class folder astrocytoma"),
    (lambda root: [p.unlink() for p in (root / "Training" / "no_tumor").iterdir()], "no_tumor has no images"),
])
def test_bad_data_layouts_name_the_cause(root, tmp_path, breakage, message):
    breakage(root)
    with pytest.raises(UserError, match=message):
        load_dataset(_config(root, tmp_path))


def test_listed_classes_must_exist(root, tmp_path):
    with pytest.raises(UserError, match="class folder .*astrocytoma not found"):
        load_dataset(_config(root, tmp_path, classes=["glioma_tumor", "astrocytoma"]))


def test_second_load_reads_the_cache_without_decoding(root, tmp_path, monkeypatch):
    first = load_dataset(_config(root, tmp_path))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache was warm")

    monkeypatch.setattr(data_module, "decode_image", no_decoding)
    second = load_dataset(_config(root, tmp_path))
    assert np.array_equal(first.test.images, second.test.images)
    # a changed file invalidates the cache
    Image.fromarray(make_image("no_tumor", np.random.default_rng(5), 96)).save(
        root / "Testing" / "no_tumor" / "synth_0000.jpg")
    with pytest.raises(AssertionError, match="cache was warm"):
        load_dataset(_config(root, tmp_path))


def test_brain_crop_fills_the_frame_and_standardize_normalises_the_brain(tmp_path):
    rng = np.random.default_rng(0)
    small_brain = np.zeros((200, 300), np.uint8)
    small_brain[60:140, 100:180] = make_image("glioma_tumor", rng, 128)[24:104, 24:104]
    path = tmp_path / "scan.png"
    Image.fromarray(small_brain).save(path)
    plain = decode_image(path, 64, [])
    cropped = decode_image(path, 64, ["brain_crop"])
    # the brain covers 80 x 80 of 200 x 300 pixels (11 %); cropped, it spans the frame
    assert brain_mask(plain.mean(axis=2)).mean() < 0.15
    rows, cols = np.nonzero(brain_mask(cropped.mean(axis=2)))
    assert rows.max() - rows.min() > 0.75 * 64 and cols.max() - cols.min() > 0.75 * 64
    standardized = decode_image(path, 64, ["brain_crop", "standardize"]).astype(float)
    inside = brain_mask(cropped.mean(axis=2))
    assert abs(standardized[inside].mean() - 127.5) < 6 and abs(standardized[inside].std() - 42.5) < 6
    with pytest.raises(ValueError, match="unknown preprocessing step.*brain-crop"):  # a typo is not skipped silently
        decode_image(path, 64, ["brain-crop"])


def test_equalize_spreads_the_brain_evenly_over_0_255_whatever_the_contrast_curve(tmp_path):
    rng = np.random.default_rng(1)
    scan = make_image("glioma_tumor", rng, 128)
    for gamma in (0.8, 1.0, 1.6):  # three scanners' contrast curves
        Image.fromarray((255 * (scan / 255.0) ** gamma).astype(np.uint8)).save(tmp_path / "scan.png")
        inside = brain_mask(decode_image(tmp_path / "scan.png", 64, ["brain_crop"]).mean(axis=2))
        equalized = decode_image(tmp_path / "scan.png", 64, ["brain_crop", "equalize"]).astype(float)
        # near uniform (mean 127.5, std 73.6), short of it by the ties of a synthetic image
        assert abs(equalized[inside].mean() - 127.5) < 15 and abs(equalized[inside].std() - 255 / 12 ** 0.5) < 10
        assert (equalized[~inside] == 0).all()
        quartiles = np.percentile(equalized[inside], [25, 50, 75])
        assert np.all(np.abs(quartiles - [64, 128, 191]) < 25), quartiles


def _scipy_brain_mask(gray):
    """brain_mask as it was written with scipy.ndimage, the reference for the numpy-only version."""
    labelled, count = ndimage.label(gray > max(10.0, 0.1 * float(np.percentile(gray, 99))))
    if count == 0:
        return np.ones_like(gray, dtype=bool)
    return ndimage.binary_fill_holes(labelled == 1 + int(np.argmax(np.bincount(labelled.ravel())[1:])))


def test_brain_mask_equals_scipy_ndimage_on_random_shapes():
    """Ties, holes, regions touching the border, nested rings: 4-connectivity and raster-order ties as scipy."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        shape = tuple(rng.integers(1, 40, size=2))
        gray = np.where(rng.random(shape) < rng.uniform(0.2, 0.8), 200.0, 0.0)
        assert np.array_equal(brain_mask(gray), _scipy_brain_mask(gray)), trial
    rings = np.zeros((21, 21))
    for width in (10, 6, 2):
        rings[10 - width:11 + width, 10 - width:11 + width] = 200.0 * (width // 2 % 2 == 1)
    assert np.array_equal(brain_mask(rings), _scipy_brain_mask(rings))
    assert brain_mask(np.zeros((5, 7))).all()


@needs_real_data
def test_brain_mask_on_real_scans_equals_the_scipy_version():
    files = [f for name in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
             for f in sorted((REAL_DATA / "Testing" / name).iterdir())[:3]]
    for file in files:
        with Image.open(file) as image:
            gray = np.asarray(image.convert("RGB")).mean(axis=2)
        assert np.array_equal(brain_mask(gray), _scipy_brain_mask(gray)), file
