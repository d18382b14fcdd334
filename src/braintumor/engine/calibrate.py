"""Fitting a run's calibration (results/calibration.py) on its own images: the out-of-distribution detector on the
training images' features, the temperature and the threshold on the validation images. At the end of training,
and for an existing run by `braintumor calibrate --run RUN_DIR`."""

from __future__ import annotations

import dataclasses

import keras

from braintumor.core import logs
from braintumor.core.errors import UserError
from braintumor.core.run import Run
from braintumor.data.dataset import Dataset, load_dataset
from braintumor.engine.scoring import Scorer
from braintumor.results import calibration
from braintumor.results.calibration import Calibration

log = logs.get_logger(__name__)


def run_dataset(run: Run, command: str) -> Dataset:
    """The train, validation and test parts `run` trained with, made again from its config (no synthetic data set is
    made for it); one line for `command` if the images changed since."""
    cfg = run.read_config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, make_synthetic_if_missing=False))
    data = load_dataset(cfg, run.classes())
    if data.summary()["validation_files"] != run.validation_files():
        raise UserError(f"the data under {cfg.data.root} changed since {run.path} was trained, so its validation "
                        f"images cannot be found again; {command} needs the run's own data")
    return data


def fit_calibration(run: Run, model: keras.Model, data: Dataset) -> Calibration:
    """Fit on `data`'s training images (without augmented copies) and validation images; write calibration.npz."""
    scorer = Scorer(model, None)
    train_features, _ = scorer.features_and_logits(data.train.images)
    val_features, val_logits = scorer.features_and_logits(data.val.images)
    cal, summary = calibration.fit(train_features, data.train.labels, val_features, val_logits, data.val.labels,
                                   len(data.classes))
    run.write_calibration(cal.arrays(), summary)
    fitted, ood = summary["temperature_fitted_on"], summary["ood"]
    log.info(f"calibration: temperature {cal.temperature:.3f} (validation NLL {fitted['nll_before']:.4f} → "
             f"{fitted['nll_after']:.4f}); the out-of-distribution threshold passes "
             f"{ood['validation_passed']:.0%} of the {fitted['images']} validation images")
    return cal
