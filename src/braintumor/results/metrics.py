"""Test-set metrics: the study's columns plus the uncertainty it did not report.

Each figure is declared once, in METRICS: compute_metrics computes it, the classification report
prints it, and compare ranks by it and tabulates it. Every function returns plain Python numbers so
the result can go straight into metrics.json; an undefined value (e.g. ROC-AUC of a class with no
positives) is ``None``, never NaN. scikit-learn is imported where it is used: it takes seconds to
load, and the command line reads METRICS for `compare --metric` before any command runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CLIP = 1e-7  # Keras clips probabilities to [1e-7, 1 - 1e-7] in categorical cross-entropy
BOOTSTRAP_RESAMPLES = 1000
# metrics.json's ci95.resamples is read back (compare recomputes each run): 10**9 would ask for 596 GiB;
# 10000 resamples of 394 images take about 150 MB
MAX_BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAPPED = ("accuracy", "macro_f1")  # the metrics ci95 holds a 95 % interval for


class Prediction:
    """One prediction set, with the per-class scores several metrics share computed once."""

    def __init__(self, y_true: np.ndarray, probs: np.ndarray, n_classes: int):
        self.y_true = np.asarray(y_true, dtype=np.int64)
        self.probs = np.asarray(probs, dtype=np.float64)
        n = len(self.y_true)
        if n == 0 or self.probs.shape != (n, n_classes):
            raise ValueError(f"need N > 0 labels and (N, {n_classes}) probabilities, got {self.probs.shape}")
        self.y_pred = self.probs.argmax(axis=1)
        self.labels = list(range(n_classes))  # fixed label set so classes absent from the data still count

    @functools.cached_property
    def per_class(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Precision, recall, F1 and support of each class."""
        from sklearn.metrics import precision_recall_fscore_support

        return precision_recall_fscore_support(self.y_true, self.y_pred, labels=self.labels, zero_division=0)

    @functools.cached_property
    def aucs(self) -> list[float | None]:
        """One-vs-rest ROC-AUC of each class."""
        return [_one_vs_rest_auc(self.y_true == k, self.probs[:, k]) for k in self.labels]

    def average(self, average: str) -> dict:
        from sklearn.metrics import precision_recall_fscore_support

        precision, recall, f1, _ = precision_recall_fscore_support(
            self.y_true, self.y_pred, labels=self.labels, average=average, zero_division=0)
        return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                "support": len(self.y_true)}


@dataclass(frozen=True)
class Metric:
    """One figure of a prediction set, and how the report and compare's tables show it."""

    name: str  # summary.csv column and `compare --metric` choice
    label: str  # column heading of the comparison tables
    title: str  # its line in classification_report.txt and in `compare --metric` help
    # None: computed with a table (the averages) or by evaluation on a subset, and only read here, from `path`
    compute: Callable[[Prediction], float | None] | None
    path: tuple[str, ...] = ()  # where metrics.json holds it; () means (name,)
    higher_is_better: bool = True
    report_line: bool = True  # False: classification_report.txt shows it elsewhere (sklearn's table, a section)

    @property
    def choice_help(self) -> str:
        """E.g. 'loss = loss (cross-entropy), lower is better', for `compare --metric` help."""
        meaning = "" if self.title.lower() == self.name.replace("_", " ") else f" = {self.title}"
        return self.name + meaning + ("" if self.higher_is_better else ", lower is better")

    def value(self, metrics: dict) -> float | None:
        """This metric in a metrics.json dict; None where it is absent (e.g. no leak-free subset was scored)."""
        node = metrics
        for key in self.path or (self.name,):
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node


def _balanced_accuracy(prediction: Prediction) -> float:
    _, recall, _, support = prediction.per_class
    return float(recall[support > 0].mean())  # sklearn's definition: mean recall over the classes present


def _cohen_kappa(prediction: Prediction) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    return _finite_or_none(cohen_kappa_score(prediction.y_true, prediction.y_pred, labels=prediction.labels))


def _roc_auc_macro(prediction: Prediction) -> float | None:
    defined = [auc for auc in prediction.aucs if auc is not None]
    return float(np.mean(defined)) if defined else None


METRICS = (
    Metric("accuracy", "accuracy", "accuracy", lambda p: float(np.mean(p.y_true == p.y_pred)), report_line=False),
    *(Metric(f"{average}_{stat}", f"{average} {short}", f"{average} {title}", None, (f"{average}_avg", stat),
             report_line=False)
      for average in ("macro", "weighted")
      for stat, short, title in (("precision", "P", "precision"), ("recall", "R", "recall"), ("f1", "F1", "F1"))),
    Metric("loss", "loss", "loss (cross-entropy)", lambda p: cross_entropy(p.y_true, p.probs),
           higher_is_better=False),
    Metric("balanced_accuracy", "bal. acc.", "balanced accuracy", _balanced_accuracy),
    Metric("cohen_kappa", "kappa", "Cohen's kappa", _cohen_kappa),
    Metric("roc_auc_macro", "ROC-AUC", "ROC-AUC (macro, one-vs-rest)", _roc_auc_macro),
    Metric("ece", "ECE", "ECE (15 bins)", lambda p: expected_calibration_error(p.y_true, p.probs),
           higher_is_better=False),
    Metric("ece_calibrated", "ECE cal.", "ECE after temperature scaling (15 bins)", None, ("calibration", "ece_after"),
           higher_is_better=False, report_line=False),
    Metric("leak_free", "leak-free acc.", "leak-free accuracy (test images without a Training twin)", None,
           ("leak_free", "accuracy"), report_line=False),
)
METRIC = {metric.name: metric for metric in METRICS}


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], seed: int = 0,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
) -> dict:
    """Every computed metric of one prediction set, ``y_true`` class indices (N,), ``probs`` (N, C), and its tables."""
    if not 1 <= n_bootstrap <= MAX_BOOTSTRAP_RESAMPLES:  # before any work: the resamples take N * n_bootstrap memory
        raise ValueError(f"{n_bootstrap} bootstrap resamples asked for, outside 1 to {MAX_BOOTSTRAP_RESAMPLES}")
    prediction = Prediction(y_true, probs, len(classes))
    precision, recall, f1, support = prediction.per_class
    return {
        "n": len(prediction.y_true),
        "classes": list(classes),
        **{metric.name: metric.compute(prediction) for metric in METRICS if metric.compute},
        "per_class": {
            name: {"precision": float(precision[k]), "recall": float(recall[k]),
                   "f1": float(f1[k]), "support": int(support[k]), "roc_auc": prediction.aucs[k]}
            for k, name in enumerate(classes)
        },
        "macro_avg": prediction.average("macro"),
        "weighted_avg": prediction.average("weighted"),
        "confusion_matrix": _confusion_matrix(prediction),
        "ci95": bootstrap_ci(prediction.y_true, prediction.y_pred, len(classes), seed, n_bootstrap),
    }


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean categorical cross-entropy, clipped like Keras so one confident mistake stays finite."""
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], CLIP, 1 - CLIP)
    return float(-np.mean(np.log(p_true)))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-1 ECE over equal-width confidence bins: sum of |accuracy - confidence| * bin share."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    gap_per_bin = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap_per_bin).sum() / len(y_true))


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, seed: int, n_bootstrap: int,
) -> dict:
    """Seeded percentile-bootstrap 95 % intervals of accuracy and macro F1 over test images.

    All resamples are scored at once: per-class counts come from one bincount over
    (resample, class) pairs, which keeps 1000 resamples of a few hundred images in milliseconds.
    """
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y_true), size=(n_bootstrap, len(y_true)))
    truth, pred = y_true[rows], y_pred[rows]
    hit = truth == pred
    offset = np.arange(n_bootstrap)[:, None] * n_classes

    def per_class_count(labels: np.ndarray) -> np.ndarray:
        return np.bincount(labels, minlength=n_bootstrap * n_classes).reshape(n_bootstrap, -1)

    true_positives = per_class_count((offset + truth)[hit])
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (true count + predicted count); 0 when undefined
    denominator = per_class_count((offset + truth).ravel()) + per_class_count(
        (offset + pred).ravel())
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros(denominator.shape),
                   where=denominator > 0)
    accuracy, macro_f1 = _percentile_interval(hit.mean(axis=1)), _percentile_interval(f1.mean(axis=1))
    return {**dict(zip(BOOTSTRAPPED, (accuracy, macro_f1), strict=True)), "resamples": n_bootstrap, "seed": seed}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact two-sided McNemar test of two models scored on the same images.

    b = images only model A gets right, c = images only model B gets right; under the null
    hypothesis each discordant image is a fair coin flip, so p = 2 * P(Binomial(b + c, 1/2) <= min).
    """
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"McNemar needs paired results, got {correct_a.shape}, {correct_b.shape}")
    b, c = int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))
    discordant = b + c
    tail = sum(math.comb(discordant, k) for k in range(min(b, c) + 1))
    p_value = min(1.0, 2 * tail / 2**discordant)  # exact integers until this one division
    return {"b": b, "c": c, "p_value": p_value}


def _confusion_matrix(prediction: Prediction) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(prediction.y_true, prediction.y_pred, labels=prediction.labels).tolist()


def _one_vs_rest_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if is_positive.all() or not is_positive.any():
        return None  # undefined without both positives and negatives
    return float(roc_auc_score(is_positive, scores))


def _percentile_interval(samples: np.ndarray) -> list[float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
