"""A run's model with its calibration: what every command that shows or writes probabilities asks.

The model runs up to its penultimate features (and the spatial means of each backbone stage, for the detector);
the logits are the penultimate features times the softmax layer's kernel plus its bias (in float64), the
probabilities softmax(logits / T) with the run's temperature, and the out-of-distribution score comes from the
same features and logits (results/calibration.py). A run trained
before calibration existed has no calibration.npz: its probabilities are the model's own (T = 1) and it has no
out-of-distribution score until `braintumor calibrate --run RUN_DIR` fits one.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from braintumor.core.errors import UserError
from braintumor.core.run import Run
from braintumor.models import facts
from braintumor.models.saved import load_run_model
from braintumor.results.calibration import Calibration, softmax

PREDICT_BATCH = 64


@dataclass
class Scores:
    probabilities: np.ndarray  # (N, C), temperature-scaled where the run is calibrated
    logits: np.ndarray  # (N, C), before the temperature
    ood_scores: np.ndarray | None  # (N,), higher is less like the training images; None without a calibration
    in_distribution: np.ndarray | None  # (N,) bool; None without a calibration


class Scorer:
    def __init__(self, model: keras.Model, calibration: Calibration | None):
        self.model = model
        self.calibration = calibration
        self._features = facts.detector_model(model)
        kernel, bias = facts.classifier(model).get_weights()
        self._kernel, self._bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)

    @property
    def feature_sizes(self) -> list[int]:
        """The sizes of the detector's feature layers (the stages', then the penultimate features')."""
        return [int(output.shape[-1]) for output in self._features.outputs]

    def features_and_logits(self, images: np.ndarray,
                            batch_size: int = PREDICT_BATCH) -> tuple[list[np.ndarray], np.ndarray]:
        """The detector's features of uint8 or float images in [0, 255]: (N, D_k) per backbone stage, then the (N, D)
        penultimate features (facts.detector_model); and the (N, C) logits. `batch_size` images at a time."""
        batches = [self._features.predict_on_batch(images[start:start + batch_size].astype(np.float32))
                   for start in range(0, len(images), batch_size)]
        features = [np.concatenate([np.asarray(batch[k], np.float64) for batch in batches]) if batches
                    else np.zeros((0, size)) for k, size in enumerate(self.feature_sizes)]
        return features, features[-1] @ self._kernel + self._bias

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return self.calibration.probabilities(logits) if self.calibration else softmax(logits)

    def __call__(self, images: np.ndarray, tta: bool = False, batch_size: int = PREDICT_BATCH) -> Scores:
        """With `tta`, the probabilities are the mean over the image and its horizontal flip; the out-of-distribution
        score is the image's own."""
        features, logits = self.features_and_logits(images, batch_size)
        probs = self.probabilities(logits)
        if tta:
            probs = (probs + self.probabilities(self.features_and_logits(images[:, :, ::-1], batch_size)[1])) / 2
        if self.calibration is None:
            return Scores(probs, logits, None, None)
        scores = self.calibration.ood_scores(features, logits)
        return Scores(probs, logits, scores, self.calibration.in_distribution(scores))


def load_calibration(run: Run) -> Calibration | None:
    return run.read_calibration(Calibration.from_arrays)


def load_scorer(run: Run) -> Scorer:
    """The run's model.keras with its calibration (none for a run trained before calibration existed)."""
    scorer = Scorer(load_run_model(run), load_calibration(run))
    if scorer.calibration is not None and not scorer.calibration.fits(scorer.feature_sizes):
        raise UserError(f"{run.calibration} was fitted on features of another model than {run.model}'s; fit it again "
                        f"with {run.how_to_calibrate()}")
    return scorer
