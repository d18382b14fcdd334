"""Test-set metrics: the study's columns plus the uncertainty it did not report.

Every function returns plain Python numbers so the result can go straight into metrics.json;
an undefined value (e.g. ROC-AUC of a class with no positives) is ``None``, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

CLIP = 1e-7  # Keras clips probabilities to [1e-7, 1 - 1e-7] in categorical cross-entropy
LOWER_IS_BETTER = ("loss", "ece")
RANKABLE = (
    "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_precision",
    "macro_recall", "weighted_precision", "weighted_recall", "cohen_kappa", "roc_auc_macro",
    *LOWER_IS_BETTER,
)


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], seed: int = 0,
    n_bootstrap: int = 1000,
) -> dict:
    """All metrics of one prediction set: ``y_true`` class indices (N,), ``probs`` (N, C)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, n_classes = len(y_true), len(classes)
    if n == 0 or probs.shape != (n, n_classes):
        raise ValueError(f"need N > 0 labels and (N, {n_classes}) probabilities, got {probs.shape}")
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))  # fixed label set so classes absent from the data still count
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    aucs = [_one_vs_rest_auc(y_true == k, probs[:, k]) for k in labels]
    defined_aucs = [a for a in aucs if a is not None]
    return {
        "n": n,
        "classes": list(classes),
        "accuracy": float(np.mean(y_true == y_pred)),
        "loss": cross_entropy(y_true, probs),
        # sklearn's definition: mean recall over the classes present in y_true
        "balanced_accuracy": float(recall[support > 0].mean()),
        "cohen_kappa": _finite_or_none(cohen_kappa_score(y_true, y_pred, labels=labels)),
        "ece": expected_calibration_error(y_true, probs),
        "roc_auc_macro": float(np.mean(defined_aucs)) if defined_aucs else None,
        "per_class": {
            name: {"precision": float(precision[k]), "recall": float(recall[k]),
                   "f1": float(f1[k]), "support": int(support[k]), "roc_auc": aucs[k]}
            for k, name in enumerate(classes)
        },
        "macro_avg": _average(y_true, y_pred, labels, "macro"),
        "weighted_avg": _average(y_true, y_pred, labels, "weighted"),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "ci95": bootstrap_ci(y_true, y_pred, n_classes, seed, n_bootstrap),
    }


def metric_value(metrics: dict, name: str) -> float | None:
    """Look up a RANKABLE name, e.g. 'loss' or 'macro_f1' (= metrics['macro_avg']['f1'])."""
    average, _, stat = name.partition("_")
    if average in ("macro", "weighted"):
        return metrics[f"{average}_avg"][stat]
    return metrics[name]


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
    return {"accuracy": _percentile_interval(hit.mean(axis=1)),
            "macro_f1": _percentile_interval(f1.mean(axis=1)),
            "resamples": n_bootstrap, "seed": seed}


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


def _average(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int], average: str) -> dict:
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "support": len(y_true)}


def _one_vs_rest_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    if is_positive.all() or not is_positive.any():
        return None  # undefined without both positives and negatives
    return float(roc_auc_score(is_positive, scores))


def _percentile_interval(samples: np.ndarray) -> list[float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
