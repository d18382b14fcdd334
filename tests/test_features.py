"""Feature cache: a head trained on cached backbone outputs equals the naive frozen-backbone fit."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from braintumor.core.config import Config, parse_config
from braintumor.data.dataset import load_dataset
from braintumor.engine import evaluate, features
from braintumor.engine.callbacks import CHECKPOINTS
from braintumor.engine.train import resume, run
from braintumor.results.reports import read_predictions


def _config(root: Path, base: Path, **train) -> Config:
    """VGG16 (random init) as a frozen feature extractor at 32 px, offline augmentation on, float32."""
    return parse_config({
        "name": "features", "seed": 0,
        "data": {"root": str(root), "image_size": 32, "val_fraction": 0.25, "cache_dir": str(base / "cache")},
        "augmentation": {"enabled": True, "mode": "offline"},
        "model": {"backbone": "vgg16", "weights": "none", "mode": "feature-extraction"},
        "train": {"epochs": 3, "batch_size": 8, "precision": "float32", "early_stopping_patience": 0, **train},
        "output": {"dir": str(base / "outputs")},
    }, "test")


def _run(cfg: Config) -> tuple[Path, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_dir = run(cfg)
    return run_dir, out.getvalue()


def _cache_files(base: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (base / "cache").glob("features-*.npy")}


def _history(run_dir: Path) -> np.ndarray:
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(r[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")] for r in rows])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synth_root) -> dict:
    """The naive fit, then the cached fit twice (miss, then hit), on the same data and seed."""
    base = tmp_path_factory.mktemp("features")
    naive, naive_log = _run(_config(synth_root, base, feature_cache=False))
    cached, cached_log = _run(_config(synth_root, base))
    files_after_first = _cache_files(base)
    again, again_log = _run(_config(synth_root, base))
    return {"base": base, "naive": naive, "naive_log": naive_log, "cached": cached, "cached_log": cached_log,
            "files_after_first": files_after_first, "again": again, "again_log": again_log,
            "files_after_again": _cache_files(base)}


def test_cached_run_equals_the_naive_frozen_backbone_run(runs):
    assert "feature cache: off (train.feature_cache is false)" in runs["naive_log"]
    assert "feature cache: miss for the 96 training images" in runs["cached_log"]  # 48 + 48 augmented copies
    assert "feature cache: miss for the 16 validation images" in runs["cached_log"]
    naive = json.loads((runs["naive"] / "metrics.json").read_text())
    cached = json.loads((runs["cached"] / "metrics.json").read_text())
    assert cached["accuracy"] == naive["accuracy"] and cached["best_epoch"] == naive["best_epoch"]
    assert cached["loss"] == pytest.approx(naive["loss"], abs=1e-4)
    np.testing.assert_allclose(_history(runs["cached"]), _history(runs["naive"]), atol=1e-4)
    _, _, naive_probs, _ = read_predictions(runs["naive"] / "predictions.csv")
    _, _, cached_probs, _ = read_predictions(runs["cached"] / "predictions.csv")
    np.testing.assert_allclose(cached_probs, naive_probs, atol=1e-4)


def test_second_run_hits_the_cache_without_running_the_backbone(runs):
    assert runs["again_log"].count("feature cache: hit") == 2 and "feature cache: miss" not in runs["again_log"]
    assert len(runs["files_after_first"]) == 2  # training and validation
    assert runs["files_after_again"] == runs["files_after_first"]  # none rewritten, none added
    first = json.loads((runs["cached"] / "metrics.json").read_text())
    second = json.loads((runs["again"] / "metrics.json").read_text())
    assert second["accuracy"] == first["accuracy"] and second["loss"] == pytest.approx(first["loss"], abs=1e-6)


def test_saved_model_is_whole_and_equals_the_head_on_cached_features(runs, synth_root, capsys):
    model = evaluate.load_run_model(runs["cached"])
    assert model.input_shape == (None, 32, 32, 3)
    assert {"preprocess", "vgg16", "pool", "head"} <= {layer.name for layer in model.layers}
    cfg = _config(synth_root, runs["base"])
    data = load_dataset(cfg)
    frozen = keras.Model(model.inputs, model.get_layer("pool").output)
    cached = features.cached_features(frozen, data.val.images, cfg.model, runs["base"] / "cache", "validation")
    assert "feature cache: hit" in capsys.readouterr().out  # the saved backbone is the one that made the cache
    head_probs = model.get_layer("head").predict(cached, verbose=0)
    np.testing.assert_allclose(evaluate.predict(model, data.val.images), head_probs, atol=1e-5)


def test_changed_offline_augmentation_misses_for_training_only(runs, synth_root):
    cfg = _config(synth_root, runs["base"], epochs=1)
    cfg.augmentation.brightness = [0.9, 1.5]
    _, log = _run(cfg)
    assert "feature cache: miss for the 96 training images" in log
    assert "feature cache: hit for the 16 validation images" in log


def test_online_augmentation_and_fine_tuning_do_not_use_the_cache(synth_root, tmp_path):
    cfg = _config(synth_root, tmp_path)
    cfg.augmentation.mode = "online"
    assert not features.applies(cfg)
    cfg.augmentation.mode, cfg.model.mode = "offline", "fine-tune"
    assert not features.applies(cfg)
    cfg.model.mode = "feature-extraction"
    assert features.applies(cfg)


def test_resume_of_a_cached_run_retrains_the_head_and_finishes_equal(runs):
    run_dir = runs["cached"].with_name(runs["cached"].name + "-interrupted")
    shutil.copytree(runs["cached"], run_dir)
    for name in ("model.keras", "metrics.json", "predictions.csv", "curves.png"):
        (run_dir / name).unlink()
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "started": "x", "finished": None}))
    (run_dir / CHECKPOINTS).mkdir()  # as a kill after epoch 1 leaves it
    (run_dir / CHECKPOINTS / "state.json").write_text(json.dumps(
        {"epoch": 1, "best_val_loss": 1.0, "best_epoch": 1, "wait": 0, "best_weights": "best-epoch1.weights.h5"}))
    lines = (run_dir / "history.csv").read_text().splitlines(keepends=True)
    (run_dir / "history.csv").write_text("".join(lines[:2]))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        resume(run_dir)
    assert "from the start (only the head trains, on cached backbone outputs)" in (run_dir / "train.log").read_text()
    assert "feature cache: hit" in out.getvalue()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    np.testing.assert_allclose(_history(run_dir), _history(runs["cached"]), atol=1e-6)
    _, _, resumed_probs, _ = read_predictions(run_dir / "predictions.csv")
    _, _, original_probs, _ = read_predictions(runs["cached"] / "predictions.csv")
    np.testing.assert_allclose(resumed_probs, original_probs, atol=1e-6)
