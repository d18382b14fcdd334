"""Evaluation: predictions of a saved model on a split, written as the run-directory reports.

Training's final report and `braintumor evaluate` share `_evaluate_split`, and both predict from
the saved model.keras with the same batch size, so re-evaluating a run's Testing split
reproduces its training-time numbers exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import yaml

from . import models, reports, rundir  # noqa: F401  (models registers the custom layers for loading)
from .config import Config, parse_config
from .data import Dataset, Split, load_split
from .errors import UserError, describe

PREDICT_BATCH = 64


def load_run_model(run_dir: Path) -> keras.Model:
    path = run_dir / "model.keras"
    if not path.is_file():
        raise UserError(f"{path} not found; evaluate needs a completed run (see its status.json)")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as err:  # Keras raises many types for damaged archives
        raise UserError(f"{path} cannot be loaded ({describe(err)}); the file is damaged: re-run training") from err


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images.astype(np.float32), batch_size=PREDICT_BATCH, verbose=0), np.float64)


def _evaluate_split(model: keras.Model, split: Split, classes: list[str], out_dir: Path, seed: int,
                    extra: dict, tta: bool = False) -> dict:
    probs = predict(model, split.images)
    if tta:
        flipped = predict(model, split.images[:, :, ::-1])
        from .metrics import compute_metrics

        extra = {**extra, "tta": compute_metrics(split.labels, (probs + flipped) / 2, classes, seed=seed)}
    return reports.write_evaluation(out_dir, split.files, split.labels, probs, classes, seed=seed, extra=extra)


def report_training_run(run_dir: Path, cfg: Config, data: Dataset, best_epoch: int | None) -> dict:
    """Testing metrics and plots of a finished training run, written into the run directory."""
    model = load_run_model(run_dir)
    metrics = _evaluate_split(model, data.test, data.classes, run_dir, cfg.seed,
                              {"split": cfg.data.test_dir, "best_epoch": best_epoch})
    reports.plot_curves(run_dir / "history.csv", run_dir / "curves.png")
    print(f"Testing: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"macro F1 {metrics['macro_avg']['f1']:.4f} ({len(data.test.files)} images)")
    return metrics


def _run_config(run_dir: Path) -> tuple[Config, list[str]]:
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} not found; pass a folder made by braintumor train")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} not found; {run_dir} is not a braintumor run directory")
    try:
        cfg = parse_config(yaml.safe_load(path.read_text()), str(path))
    except yaml.YAMLError as err:
        raise UserError(f"{path} is corrupt ({err}); the run cannot be evaluated") from err
    return cfg, rundir.read_json(run_dir / "data.json")["classes"]


def evaluate_run(run_dir: Path, data_root: Path | None = None, split: str = "Testing", out_dir: Path | None = None,
                 tta: bool = False, leak_free: bool = False) -> Path:
    """`braintumor evaluate`: metrics of a run's saved model on one split; returns the output folder."""
    cfg, classes = _run_config(run_dir)
    data_cfg = dataclasses.replace(cfg.data, root=str(data_root) if data_root else cfg.data.root,
                                   make_synthetic_if_missing=False)
    model = load_run_model(run_dir)
    if split == "validation":
        chosen, _, _, _ = load_split(data_cfg, data_cfg.train_dir, classes)
        wanted = set(rundir.read_json(run_dir / "data.json")["validation_files"])
        chosen = chosen.subset(np.array([i for i, f in enumerate(chosen.files) if f in wanted], dtype=int))
    else:
        chosen, _, _, _ = load_split(data_cfg, split, classes)
    dest = out_dir or run_dir / "eval" / f"{split}-{rundir.timestamp()}"
    with rundir.staged_dir(dest) as tmp:
        metrics = _evaluate_split(model, chosen, classes, tmp, cfg.seed,
                                  {"split": split, "data_root": data_cfg.root, "run": str(run_dir)}, tta=tta)
    print(f"{split}: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"macro F1 {metrics['macro_avg']['f1']:.4f} ({len(chosen.files)} images) → {dest}")
    if tta:
        print(f"{split} with flip TTA: accuracy {metrics['tta']['accuracy']:.4f}")
    return dest
