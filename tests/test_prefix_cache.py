"""Prefix cache: training the part after a cached frozen prefix equals the naive fit (feature extraction and
fine-tuning), the cut reproduces the whole model, damaged cache files are rebuilt, and a killed run resumes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from braintumor.core import cache
from braintumor.core.config import Config, parse_config
from braintumor.core.logs import setup_console
from braintumor.core.run import CHECKPOINTS, Run
from braintumor.data.dataset import load_dataset
from braintumor.data.synth import make_dataset
from braintumor.engine import prefix_cache
from braintumor.engine.train import _prepare, resume, run
from braintumor.models.build import build_model
from braintumor.models.saved import load_run_model
from braintumor.results.reports import read_predictions

SRC = Path(__file__).resolve().parents[1] / "src"


def _settings(root: Path, base: Path, mode: str, **train) -> dict:
    """VGG16 (random init) at 32 px, offline augmentation on, float32. Two epochs: a history and a best epoch to
    compare, and fine-tuning's Adam steps on a random VGG16's tiny gradients magnify float32 sums taken in another
    order (2.3e-4 in a probability after three epochs, against 1e-4 after two)."""
    return {
        "name": mode, "seed": 0,
        "data": {"root": str(root), "image_size": 32, "val_fraction": 0.25, "cache_dir": str(base / "cache")},
        "augmentation": {"enabled": True, "mode": "offline"},
        "model": {"backbone": "vgg16", "weights": "none", "mode": mode},
        "train": {"epochs": 2, "batch_size": 8, "precision": "float32", "early_stopping_patience": 0, **train},
        "output": {"dir": str(base / "outputs")},
    }


def _config(root: Path, base: Path, mode: str = "feature-extraction", **train) -> Config:
    return parse_config(_settings(root, base, mode, **train), "test")


@contextlib.contextmanager
def _messages():
    """What the package logs and prints meanwhile, as one string (read it after the block). The package's
    console handler writes to whatever sys.stdout is, so each message lands here once."""
    out = io.StringIO()
    setup_console()
    with contextlib.redirect_stdout(out):
        yield out


def _run(cfg: Config) -> tuple[Path, str]:
    with _messages() as out:
        run_dir = run(cfg)
    return run_dir, out.getvalue()


def _cache_files(base: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (base / "cache").glob("prefix-*.npy")}


def _history(run_dir: Path) -> np.ndarray:
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(r[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")] for r in rows])


def _assert_same_results(one: Path, other: Path, atol: float) -> None:
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (one, other))
    assert first["accuracy"] == second["accuracy"] and first["best_epoch"] == second["best_epoch"]
    assert first["loss"] == pytest.approx(second["loss"], abs=atol)
    np.testing.assert_allclose(_history(one), _history(other), atol=atol)
    np.testing.assert_allclose(read_predictions(one / "predictions.csv")[2],
                               read_predictions(other / "predictions.csv")[2], atol=atol)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Half the shared synthetic set (8 training and 3 test images per class): each VGG16 run here costs its
    forward and backward passes per image, and no assertion needs more images."""
    return make_dataset(tmp_path_factory.mktemp("data") / "synth", train_per_class=8, test_per_class=3, size=96,
                        seed=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, root) -> dict:
    """Feature extraction and fine-tuning, each naive and then cached."""
    base = tmp_path_factory.mktemp("prefix")
    result = {"base": base}
    result["naive"], result["naive_log"] = _run(_config(root, base, prefix_cache=False))
    result["cached"], result["cached_log"] = _run(_config(root, base))
    result["files_after_first"] = _cache_files(base)
    result["tune_naive"], result["tune_naive_log"] = _run(_config(root, base, "fine-tune", prefix_cache=False))
    result["tune_cached"], result["tune_cached_log"] = _run(_config(root, base, "fine-tune"))
    return result


def test_fine_tune_on_the_cached_prefix_equals_the_naive_fine_tune(runs):
    assert "prefix cache: off (train.prefix_cache is false)" in runs["tune_naive_log"]
    assert "prefix cache: on at vgg16/block4_pool" in runs["tune_cached_log"]
    assert "prefix cache: miss for the 48 training images" in runs["tune_cached_log"]  # 24 + 24 augmented copies
    _assert_same_results(runs["tune_cached"], runs["tune_naive"], atol=1e-4)
    env = json.loads((runs["tune_cached"] / "env.json").read_text())
    assert env["prefix_cache"].startswith("on at vgg16/block4_pool")
    model = load_run_model(Run(runs["tune_cached"]))  # the whole model, block5 trained
    assert model.input_shape == (None, 32, 32, 3) and {"preprocess", "vgg16", "pool", "head"} <= {
        layer.name for layer in model.layers}
    naive = load_run_model(Run(runs["tune_naive"]))
    block5 = [(a, b) for a, b in zip(model.get_layer("vgg16").layers, naive.get_layer("vgg16").layers, strict=True)
              if a.name.startswith("block5_conv")]
    for ours, theirs in block5:  # within a tenth of one Adam step (1e-3): 14 of 2.4M weights moved by up to 1.8e-5
        np.testing.assert_allclose(ours.get_weights()[0], theirs.get_weights()[0], atol=1e-4)


def test_feature_extraction_is_the_special_case_cut_after_pooling(runs):
    assert "prefix cache: off (train.prefix_cache is false)" in runs["naive_log"]
    assert "prefix cache: on: the frozen backbone runs once" in runs["cached_log"]
    assert "prefix cache: miss for the 8 validation images" in runs["cached_log"]
    _assert_same_results(runs["cached"], runs["naive"], atol=1e-4)


def _prepared_and_cut(cfg: Config):
    """What a run prepares and where its fit model starts, without fitting."""
    prepared = _prepare(cfg)
    return prepared, prefix_cache.cut_model(cfg, prepared.model)


def test_second_run_hits_the_cache_without_running_the_prefix(runs, root):
    """What a second run prepares and feeds fit, without fitting: both prefix outputs come from the cache, no file
    is rewritten, and what the cache serves is what the frozen prefix computes."""
    cfg = _config(root, runs["base"])
    with _messages() as out:
        prepared, where = _prepared_and_cut(cfg)
        inputs = {"training": prepared.images, "validation": prepared.data.val.images}  # as fit_inputs passes them
        served = {desc: prefix_cache.cached_outputs(where, images, Path(cfg.data.cache_dir), desc)
                  for desc, images in inputs.items()}
    log = out.getvalue()
    assert log.count("prefix cache: hit") == 2 and "prefix cache: miss" not in log
    assert len(runs["files_after_first"]) == 2  # training and validation
    now = _cache_files(runs["base"])
    assert {name: now.get(name) for name in runs["files_after_first"]} == runs["files_after_first"]  # none rewritten
    for desc, images in inputs.items():
        np.testing.assert_allclose(served[desc], where.prefix([images.astype(np.float32)]), atol=1e-5)


def test_changed_offline_augmentation_misses_for_training_only(runs, root):
    """What a run prepares and feeds fit, without fitting: the cache lookups are all that differs here."""
    cfg = _config(root, runs["base"])
    cfg.augmentation.brightness = [0.9, 1.5]
    with _messages() as out:
        prepared, where = _prepared_and_cut(cfg)
        prefix_cache.fit_inputs(cfg, where, prepared.images, prepared.labels, prepared.data.val.images,
                                prepared.data.val.labels, epochs=range(cfg.train.epochs))
    log = out.getvalue()
    assert "prefix cache: miss for the 48 training images" in log
    assert "prefix cache: hit for the 8 validation images" in log


def test_every_cache_file_is_written_the_one_checksummed_way(runs):
    """The decoded images, the signatures (leak-free metrics) and the prefix outputs: each file has its sidecar with
    the SHA-256 of its bytes, and no temp file is left."""
    folder = runs["base"] / "cache"
    files = sorted(p for p in folder.iterdir() if p.suffix != ".json")
    assert {p.name.partition("-")[0] for p in files} == {"decoded", "signatures.npz", "prefix"}
    for path in files:
        assert json.loads(cache.sidecar(path).read_text())["sha256"] == cache.file_sha256(path)
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(cache.sidecar(p).name for p in files)
    assert not list(folder.glob(".*"))


def test_an_unwritable_cache_folder_warns_once_and_trains_the_same_without_caching(runs, root, tmp_path):
    """A file in the way of data.cache_dir: the decoded images and the prefix outputs stay in memory."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = _config(root, runs["base"])
    cfg.data.cache_dir = str(blocker / "cache")
    run_dir, log = _run(cfg)
    assert log.count("cannot write the cache") == 1 and "continuing without caching" in log
    assert "prefix cache: on: the frozen backbone runs once" in log
    assert "prefix cache: miss for the 48 training images" in log and "prefix cache: hit" not in log
    _assert_same_results(run_dir, runs["cached"], atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "garbage", "no sidecar", "sidecar only"])
def test_damaged_cache_file_is_reported_deleted_and_rebuilt(runs, root, tmp_path, damage):
    cfg = _config(root, runs["base"])
    cfg.data.cache_dir = str(tmp_path / "cache")
    model = build_model(cfg.model, 32, 4)
    where = prefix_cache.cut_model(cfg, model)
    images = load_dataset(cfg).val.images
    with _messages():
        first = np.array(prefix_cache.cached_outputs(where, images, tmp_path / "cache", "validation"))
    (path,) = (tmp_path / "cache").glob("prefix-*.npy")
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 100)
    elif damage == "flip a byte":
        with path.open("r+b") as handle:
            handle.seek(-7, os.SEEK_END)
            byte = handle.read(1)
            handle.seek(-7, os.SEEK_END)
            handle.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())
    elif damage == "no sidecar":
        cache.sidecar(path).unlink()
    else:
        path.unlink()
    with _messages() as out:
        again = np.array(prefix_cache.cached_outputs(where, images, tmp_path / "cache", "validation"))
    log = out.getvalue()
    assert log.count(f"prefix cache: {path} is damaged or incomplete") == 1 and "prefix cache: miss" in log
    assert len(log.splitlines()) == 2  # the warning and the miss, one line each
    np.testing.assert_array_equal(again, first)
    folder = tmp_path / "cache"
    assert sorted(p.name for p in folder.glob("prefix-*")) == sorted([path.name, cache.sidecar(path).name])
    assert not list(folder.glob(".*"))
    with _messages() as out:
        prefix_cache.cached_outputs(where, images, tmp_path / "cache", "validation")
    assert "prefix cache: hit" in out.getvalue()


def test_mixed_bfloat16_outputs_are_cached_in_bfloat16(root, tmp_path):
    cfg = _config(root, tmp_path, "fine-tune")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        where = prefix_cache.cut_model(cfg, build_model(cfg.model, 32, 4))
        images = load_dataset(cfg).val.images
        with _messages():
            cached = prefix_cache.cached_outputs(where, images, tmp_path / "cache", "validation")
        direct = where.prefix.predict_on_batch(images.astype(np.float32))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert str(cached.dtype) == "bfloat16" and isinstance(cached.base, np.memmap)
    (path,) = (tmp_path / "cache").glob("prefix-*.npy")
    assert path.stat().st_size < 200 + cached.size * 2 + 1  # two bytes a value, plus the header
    np.testing.assert_array_equal(np.asarray(cached).astype(np.float32), np.asarray(direct).astype(np.float32))


def test_online_augmentation_full_mode_and_the_switch_turn_the_cache_off(root, tmp_path):
    cfg = _config(root, tmp_path, "fine-tune")
    assert prefix_cache.applies(cfg)
    cfg.augmentation.mode = "online"
    assert not prefix_cache.applies(cfg)
    cfg.augmentation.mode, cfg.model.mode = "offline", "full"
    assert not prefix_cache.applies(cfg)
    cfg.model.mode, cfg.train.prefix_cache = "fine-tune", False
    assert not prefix_cache.applies(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "size", "boundary"), [
    ("vgg16", 32, "block4_pool"), ("resnet50", 32, "conv4_block6_out"), ("inceptionv3", 75, "mixed8")])
def test_prefix_then_suffix_equals_the_whole_model(root, tmp_path, backbone, size, boundary):
    cfg = _config(root, tmp_path, "fine-tune")
    cfg.model.backbone = backbone
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, size, 4)
    with _messages():
        where = prefix_cache.cut_model(cfg, model)
    assert where.boundary.endswith(f"/{boundary}")
    assert {layer.name for layer in where.suffix.layers} >= {"pool", "head"}
    trainable = {id(v) for v in model.trainable_variables}
    assert {id(v) for v in where.suffix.trainable_variables} == trainable  # shared, and all of them
    assert not where.prefix.trainable_variables
    images = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
    whole = model.predict_on_batch(images)
    np.testing.assert_allclose(where.suffix.predict_on_batch(where.prefix.predict_on_batch(images)), whole,
                               rtol=1e-6, atol=1e-7)
    if backbone != "vgg16":  # a boundary inside a residual block / an Inception module: naive path, and why
        cfg.model.fine_tune_after = {"resnet50": "conv5_block1_1_conv", "inceptionv3": "mixed9_0"}[backbone]
        with _messages() as out:
            cut = prefix_cache.cut_model(cfg, model)
        assert cut.suffix is None and "cuts through a skip connection" in cut.reason
        assert "prefix cache: off (model.fine_tune_after" in out.getvalue()


@pytest.mark.slow
@pytest.mark.extended
def test_killed_cached_fine_tune_resumes_from_its_last_epoch(root, tmp_path):
    """A real kill (SIGKILL) after the first epoch's checkpoint; resume continues from there, on the cache."""
    epochs = 12
    settings = _settings(root, tmp_path, "fine-tune", epochs=epochs)
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "braintumor.cli", "train", str(config)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        state = None
        while process.poll() is None and state is None:
            state = next((tmp_path / "outputs").glob(f"*/{CHECKPOINTS}/state.json"), None)
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert state is not None, (tmp_path / "killed.log").read_text()[-2000:]
    run_dir = state.parents[1]
    done = json.loads(state.read_text())["epoch"]
    assert 1 <= done < epochs
    before = (run_dir / "history.csv").read_text().splitlines()[:1 + done]
    with _messages() as out:
        resume(run_dir)
    log = out.getvalue()
    assert f"resuming {run_dir} after epoch {done} of {epochs}" in log
    assert "prefix cache: hit for the 48 training images" in log and "prefix cache: miss" not in log
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[:1 + done] == before and len(history) == 1 + epochs
    # the resumed fit started from the checkpoint: its first epoch's loss continues the run, not a fresh start
    fresh, _ = _run(parse_config(settings | {"train": {**settings["train"], "epochs": 1}}, "test"))
    losses = _history(run_dir)[:, 0]
    assert losses[done] < _history(fresh)[0, 0]
    assert load_run_model(Run(run_dir)).input_shape == (None, 32, 32, 3)
