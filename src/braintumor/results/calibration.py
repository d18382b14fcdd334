"""Calibrated probabilities, and "this image does not look like the training data", fitted on a run's own images.

Temperature scaling (Guo et al., 2017): the logits z of an image are divided by one temperature T, fitted to
minimise the negative log-likelihood of the validation images over T in TEMPERATURE_RANGE; softmax(z / T) keeps
the order of the classes, so the predicted class never changes.

The out-of-distribution score of an image (higher: less like the training images) adds standardised parts:
- feature distances, one per feature layer: sqrt(min over classes c of (f - mu_c)' P (f - mu_c)), with f the
  layer's features, mu_c their class means over the training images and P the inverse of their shared
  within-class covariance (Lee et al., 2018), shrunk toward a multiple of the identity (Ledoit-Wolf), so that a
  few dozen images in hundreds of dimensions still give a well-conditioned inverse. The layers are the spatial
  means of each backbone stage and the penultimate features (the pooled features the classifier reads): the
  early stages see edges and textures, where a photograph or a page of text differs from an MRI slice even when
  the last layer maps it near a class (Lee et al.'s feature ensemble, with equal weights);
- energy: -logsumexp(z) (Liu et al., 2020), low where the logits are large and confident.
Each part is standardised by its mean and standard deviation over the validation images, and the score is their
sum. A calibration fitted before the stages were read has one feature layer, the penultimate features.
The threshold is the 95th percentile of the validation scores (the next higher score): an image is in distribution
when its score is at most the threshold, so at least VALIDATION_PASS of the validation images pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from braintumor.results.metrics import cross_entropy, expected_calibration_error

TEMPERATURE_RANGE = (0.05, 20.0)
VALIDATION_PASS = 0.95  # the share of validation images the threshold lets pass
_SEARCH_STEPS = 60  # golden-section steps on log T: the bracket shrinks to 0.618**60 of its width


def logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1)
    return top + np.log(np.exp(logits - top[:, None]).sum(axis=1))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / temperature
    return np.exp(scaled - logsumexp(scaled)[:, None])


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature), exact (not clipped)."""
    scaled = np.asarray(logits, np.float64) / temperature
    return float(np.mean(logsumexp(scaled) - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_RANGE minimising the NLL; golden-section search on log T (the NLL is convex in 1/T,
    hence unimodal in log T)."""
    low, high = np.log(TEMPERATURE_RANGE)
    ratio = (np.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(logits, labels, float(np.exp(log_t)))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(_SEARCH_STEPS):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(np.exp((low + high) / 2))


@dataclass(frozen=True)
class Calibration:
    """A run's temperature and out-of-distribution detector (the arrays of calibration.npz)."""

    temperature: float
    means: tuple[np.ndarray, ...]  # per feature layer (classes, D_k): class means of the training images' features
    precision: tuple[np.ndarray, ...]  # per feature layer (D_k, D_k): inverse of the shrunk within-class covariance
    centre: np.ndarray  # (layers + 1,): validation mean of each feature distance and of the energy
    scale: np.ndarray  # (layers + 1,): their validation standard deviations
    threshold: float  # scores above it are out of distribution

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature)

    def fits(self, dims: Sequence[int]) -> bool:
        """Whether the detector reads features of these sizes (the scorer's layers, the penultimate last)."""
        return len(dims) >= len(self.means) and [m.shape[1] for m in self.means] == list(dims[-len(self.means):])

    def ood_scores(self, features: Sequence[np.ndarray], logits: np.ndarray) -> np.ndarray:
        """Scores of images from their feature layers (the last len(means) of them are read) and logits."""
        parts = _parts(features[-len(self.means):], logits, self.means, self.precision)
        return ((parts - self.centre) / self.scale).sum(axis=1)

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return scores <= self.threshold

    def arrays(self) -> dict[str, np.ndarray]:
        return {"temperature": np.float64(self.temperature), "centre": self.centre, "scale": self.scale,
                "threshold": np.float64(self.threshold),
                **{f"means_{k}": means for k, means in enumerate(self.means)},
                **{f"precision_{k}": precision for k, precision in enumerate(self.precision)}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Calibration:
        """ValueError or KeyError for arrays that do not fit together (an edited or foreign file). A file written
        before the stages were read holds `means` and `precision` of the penultimate features alone."""
        layers = ([""] if "means" in arrays else
                  [f"_{k}" for k in range(sum(name.startswith("means_") for name in arrays))])
        cal = cls(float(arrays["temperature"]),
                  tuple(np.asarray(arrays[f"means{suffix}"], np.float64) for suffix in layers),
                  tuple(np.asarray(arrays[f"precision{suffix}"], np.float64) for suffix in layers),
                  np.asarray(arrays["centre"], np.float64), np.asarray(arrays["scale"], np.float64),
                  float(arrays["threshold"]))
        if (not layers or any(m.ndim != 2 or p.shape != m.shape[1:] * 2 for m, p in zip(cal.means, cal.precision,
                                                                                       strict=True))
                or len({m.shape[0] for m in cal.means}) != 1 or cal.centre.shape != (len(layers) + 1,)
                or cal.scale.shape != cal.centre.shape
                or not TEMPERATURE_RANGE[0] <= cal.temperature <= TEMPERATURE_RANGE[1] or not (cal.scale > 0).all()):
            raise ValueError("its arrays do not fit together")
        return cal


def _distance(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N,): the Mahalanobis distance of each row of `features` to the nearest of `means`."""
    features = np.asarray(features, np.float64)
    projected = features @ precision
    squared = ((projected * features).sum(axis=1)[:, None] - 2 * projected @ means.T
               + ((means @ precision) * means).sum(axis=1)[None, :])
    return np.sqrt(np.maximum(squared.min(axis=1), 0))


def _parts(features: Sequence[np.ndarray], logits: np.ndarray, means: Sequence[np.ndarray],
           precision: Sequence[np.ndarray]) -> np.ndarray:
    """(N, layers + 1): each feature layer's distance to its nearest class mean, and the energy, of each image."""
    distances = [_distance(f, m, p) for f, m, p in zip(features, means, precision, strict=True)]
    return np.stack([*distances, -logsumexp(np.asarray(logits, np.float64))], axis=1)


def _class_gaussian(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Class means, the precision of their shared within-class covariance (Ledoit-Wolf) and its shrinkage."""
    from sklearn.covariance import ledoit_wolf

    features = np.asarray(features, np.float64)
    overall = features.mean(axis=0)
    means = np.stack([features[labels == c].mean(axis=0) if (labels == c).any() else overall
                      for c in range(n_classes)])
    covariance, shrinkage = ledoit_wolf(features - means[labels], assume_centered=True)
    return means, np.linalg.pinv(covariance, hermitian=True), float(shrinkage)


def fit(train_features: Sequence[np.ndarray], train_labels: np.ndarray, val_features: Sequence[np.ndarray],
        val_logits: np.ndarray, val_labels: np.ndarray, n_classes: int) -> tuple[Calibration, dict]:
    """The temperature (on the validation logits) and the detector (class means and covariance of each feature
    layer on the training images, standardisation and threshold on the validation images); and a summary in words
    and figures."""
    gaussians = [_class_gaussian(layer, train_labels, n_classes) for layer in train_features]
    means, precision = tuple(g[0] for g in gaussians), tuple(g[1] for g in gaussians)
    parts = _parts(val_features, val_logits, means, precision)
    centre, spread = parts.mean(axis=0), parts.std(axis=0)
    scale = np.where(spread > 0, spread, 1.0)  # a single validation image has no spread
    temperature = fit_temperature(val_logits, val_labels)
    scores = ((parts - centre) / scale).sum(axis=1)
    threshold = float(np.quantile(scores, VALIDATION_PASS, method="higher"))
    cal = Calibration(temperature, means, precision, centre, scale, threshold)
    summary = {
        "temperature": temperature,
        "temperature_fitted_on": {"images": len(val_labels), "nll_before": nll(val_logits, val_labels),
                                  "nll_after": nll(val_logits, val_labels, temperature)},
        "ood": {
            "score": "sum of standardised feature distances (Mahalanobis to the nearest class mean, shared Ledoit-Wolf "
                     "covariance; one per backbone stage's spatial means and one of the penultimate features) and "
                     "the standardised energy -logsumexp(logits); higher is less like the training images",
            "threshold": threshold,
            "validation_passed": float(cal.in_distribution(scores).mean()),
            "training_images": len(train_labels),
            "features": [int(m.shape[1]) for m in means],
            "shrinkage": [g[2] for g in gaussians],
        },
    }
    return cal, summary


def calibration_report(cal: Calibration, logits: np.ndarray, labels: np.ndarray) -> dict:
    """metrics.json's `calibration`: the temperature and ECE (15 bins) and NLL (as the loss) before and after."""
    before, after = softmax(logits), cal.probabilities(logits)
    return {"temperature": cal.temperature,
            "ece_before": expected_calibration_error(labels, before),
            "ece_after": expected_calibration_error(labels, after),
            "nll_before": cross_entropy(labels, before), "nll_after": cross_entropy(labels, after)}


def flagged_report(cal: Calibration, in_distribution: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict:
    """metrics.json's `ood`: the share of images flagged as unlike the training data, overall and per class."""
    flagged = ~np.asarray(in_distribution, bool)
    return {"threshold": cal.threshold, "flagged": float(flagged.mean()),
            "per_class": {name: {"n": int((labels == k).sum()),
                                 "flagged": float(flagged[labels == k].mean()) if (labels == k).any() else None}
                          for k, name in enumerate(classes)}}
