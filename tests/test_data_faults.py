"""Caches are verified, never trusted; data is never invented; hostile image files are skipped or read right."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintumor.cli import main
from braintumor.core.config import parse_config
from braintumor.core.errors import UserError
from braintumor.data.dataset import load_dataset
from braintumor.data.decode import decode_image
from braintumor.data.files import scan_tree
from braintumor.data.twins import compute_signatures

ROOT = Path(__file__).resolve().parents[1]


def _config(root: Path, cache: Path, **data):
    return parse_config({"data": {"root": str(root), "image_size": 32, "val_fraction": 0.25,
                                  "cache_dir": str(cache), **data},
                         "model": {"backbone": "simple_cnn", "weights": "none"}}, "test")


@pytest.fixture
def root(tmp_path, synth_root) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(synth_root, copy)
    return copy


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------- decoded-image cache

def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def _short(path: Path) -> None:
    path.write_bytes(b"\x93NUMPY")


def _flip_one_pixel(path: Path) -> None:  # still a valid .npy of the right shape: only the checksum sees it
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, target", [
    (_zero, ".npy"), (_truncate, ".npy"), (_garbage, ".npy"), (_short, ".npy"), (_flip_one_pixel, ".npy"),
    (_zero, ".json"), (lambda p: p.unlink(), ".json"), (lambda p: p.unlink(), ".npy"),
])
def test_a_damaged_image_cache_is_reported_deleted_and_rebuilt(root, tmp_path, caplog, damage, target):
    cache = tmp_path / "cache"
    first = load_dataset(_config(root, cache))
    for array in cache.glob("decoded-*.npy"):  # each with its sidecar, decoded-*.json
        damage(array.with_suffix(target))
    caplog.set_level(logging.WARNING, logger="braintumor")
    again = load_dataset(_config(root, cache))
    damaged = [m for m in _warnings(caplog) if "image cache" in m and "damaged" in m]
    assert len(damaged) == 2 and all("\n" not in m for m in damaged)  # Training and Testing, one line each
    assert np.array_equal(again.train.images, first.train.images)
    assert np.array_equal(again.test.images, first.test.images)
    caplog.clear()
    load_dataset(_config(root, cache))  # rebuilt and whole again
    assert not _warnings(caplog)
    assert not list(cache.glob(".*partial*"))


def test_an_unwritable_cache_folder_warns_once_and_only_costs_speed(root, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    caplog.set_level(logging.WARNING, logger="braintumor")
    cfg = _config(root, blocker / "cache", exclude_test_twins=True)  # the signature cache goes there too
    dataset = load_dataset(cfg)
    assert len(dataset.test.files) == 24
    unwritable = [m for m in _warnings(caplog) if "cannot write the cache" in m]
    assert len(unwritable) == 1 and "continuing without caching" in unwritable[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "copy"]  # no temp files anywhere


# ---------------------------------------------------------------- signature cache

@pytest.mark.parametrize("damage", [_zero, _truncate, _garbage, _short])
def test_a_damaged_signature_cache_is_reported_and_rebuilt(root, tmp_path, caplog, damage):
    files = [image.path for image in scan_tree(root)[0]][:12]
    fresh = compute_signatures(files, cache_dir=tmp_path)
    damage(tmp_path / "signatures.npz")
    caplog.set_level(logging.WARNING, logger="braintumor")
    again = compute_signatures(files, cache_dir=tmp_path)
    assert [m for m in _warnings(caplog) if "signature cache" in m and "damaged" in m]
    assert (again.sha256 == fresh.sha256).all() and np.array_equal(again.thumb, fresh.thumb)
    caplog.clear()
    compute_signatures(files, cache_dir=tmp_path)
    assert not _warnings(caplog)


def test_an_edited_signature_cache_fails_its_checksum(root, tmp_path, caplog):
    files = [image.path for image in scan_tree(root)[0]][:6]
    fresh = compute_signatures(files, cache_dir=tmp_path)
    with np.load(tmp_path / "signatures.npz") as saved:
        columns = {name: saved[name] for name in saved.files}
    columns["thumb"] = np.zeros_like(columns["thumb"])  # a poisoned but well-formed cache
    with open(tmp_path / "signatures.npz", "wb") as handle:
        np.savez(handle, **columns)
    caplog.set_level(logging.WARNING, logger="braintumor")
    again = compute_signatures(files, cache_dir=tmp_path)
    assert any("does not match its checksum" in m for m in _warnings(caplog))
    assert np.array_equal(again.thumb, fresh.thumb)


# ---------------------------------------------------------------- never invent data

def test_quickstart_with_a_mistyped_root_is_an_error_and_writes_nothing(tmp_path, capsys):
    typo = tmp_path / "some" / "typo"
    assert main(["train", str(ROOT / "configs/quickstart.yaml"), "--set", f"data.root={typo}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"data root {typo} not found" in err and "only at data/synthetic" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "some").exists()


def test_quickstart_writes_its_own_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"data": {"root": "data/synthetic", "make_synthetic_if_missing": True}}, "test")
    from braintumor.data.dataset import find_classes

    assert find_classes(cfg.data) == ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    assert (tmp_path / "data/synthetic/Training").is_dir()


# ---------------------------------------------------------------- hostile and odd image files

def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG that declares width x height pixels: a decompression bomb to PIL's size check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [12_000, 40_000])  # above PIL's warning limit; above its error limit
def test_decompression_bombs_are_skipped_and_listed(root, tmp_path, side):
    bomb = root / "Training" / "glioma_tumor" / "bomb.png"
    _png_header_only(bomb, side, side)
    dataset = load_dataset(_config(root, tmp_path / "cache"))
    (skipped,) = dataset.skipped
    assert skipped["file"] == "Training/glioma_tumor/bomb.png" and "DecompressionBomb" in skipped["reason"]
    (sig,) = compute_signatures([bomb]).error
    assert "DecompressionBomb" in sig
    with pytest.raises(UserError, match="cannot read image .*bomb.png"):
        load_dataset(_config(root, tmp_path / "cache2", strict=True))


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1)).astype(np.uint16)  # a 12-bit scan in a 16-bit PNG
    path = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    rgb = decode_image(path, 64, [])
    assert (rgb == 255).mean() < 0.05 and rgb.max() == 255 and rgb.min() == 0
    assert np.corrcoef(rgb[..., 0].ravel(), ramp.ravel())[0, 1] > 0.99
    gray_bits = compute_signatures([path])
    assert gray_bits.error[0] == "" and 100 < gray_bits.stats[0, 0] < 155  # mean of a 0..255 ramp, not 255


def test_file_names_that_are_not_utf8_load_and_cache(root, tmp_path):
    folder = root / "Training" / "no_tumor"
    os.rename(folder / "synth_0000.jpg", os.fsencode(folder) + b"/scan\xff\xfe.jpg")
    cfg = _config(root, tmp_path / "cache")
    dataset = load_dataset(cfg)
    files = dataset.train.files + dataset.val.files
    (odd,) = [f for f in files if f.startswith("Training/no_tumor/scan")]
    assert os.fsencode(odd).endswith(b"scan\xff\xfe.jpg")
    assert load_dataset(cfg).summary() == dataset.summary()  # from the cache
