"""metrics.py against scikit-learn/scipy recomputations and hand-worked cases."""

import json

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from braintumor.results.metrics import bootstrap_ci, compute_metrics, expected_calibration_error, mcnemar

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def predictions(n: int, seed: int = 0, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and softmax probabilities that are right more often than chance."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) * 1.5
    logits[np.arange(n), y_true] += 1.5
    probs = np.exp(logits)
    return y_true, probs / probs.sum(axis=1, keepdims=True)


def test_metrics_match_sklearn_and_are_plain_json():
    y_true, probs = predictions(394)
    y_pred = probs.argmax(axis=1)
    m = compute_metrics(y_true, probs, CLASSES)
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert m["n"] == 394 and m["classes"] == CLASSES
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), rel=1e-12)
    assert m["loss"] == pytest.approx(log_loss(y_true, probs), rel=1e-9)
    balanced = balanced_accuracy_score(y_true, y_pred)
    assert m["balanced_accuracy"] == pytest.approx(balanced, rel=1e-12)
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred), rel=1e-12)
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr"))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred)
    for k, name in enumerate(CLASSES):
        assert m["per_class"][name] == pytest.approx({
            "precision": precision[k], "recall": recall[k], "f1": f1[k], "support": support[k],
            "roc_auc": roc_auc_score(y_true == k, probs[:, k])})
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average)
        assert m[f"{average}_avg"] == pytest.approx(
            {"precision": p, "recall": r, "f1": f, "support": 394})


def test_loss_clips_like_keras():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    loss = compute_metrics(np.array([1, 0]), probs, ["a", "b"])["loss"]
    assert loss == pytest.approx((-np.log(1e-7) - np.log(0.5)) / 2)


def test_absent_class_counts_as_zero_and_undefined_auc_is_null():
    # class 3 never occurs and is never predicted; class 2 is predicted but never true
    y_true = np.array([0, 0, 1, 1, 1, 0])
    probs = np.full((6, 4), 0.1)
    probs[np.arange(6), [0, 2, 1, 1, 0, 0]] = 0.7
    m = compute_metrics(y_true, probs, CLASSES)
    y_pred = probs.argmax(axis=1)
    assert m["per_class"]["pituitary_tumor"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "roc_auc": None}
    assert m["per_class"]["no_tumor"]["roc_auc"] is None
    macro_f1 = f1_score(y_true, y_pred, labels=range(4), average="macro", zero_division=0)
    assert m["macro_avg"]["f1"] == pytest.approx(macro_f1)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    defined = [roc_auc_score(y_true == k, probs[:, k]) for k in (0, 1)]
    assert m["roc_auc_macro"] == pytest.approx(np.mean(defined))
    assert np.array(m["confusion_matrix"]).shape == (4, 4)
    json.dumps(m, allow_nan=False)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_single_class_gives_null_kappa_and_auc():
    m = compute_metrics(np.zeros(5, int), np.tile([0.9, 0.1], (5, 1)), ["a", "b"])
    assert m["cohen_kappa"] is None and m["roc_auc_macro"] is None
    assert m["ci95"]["accuracy"] == [1.0, 1.0]


def test_ece_of_calibrated_and_overconfident_predictions():
    # 80 % confident and right 8 times in 10: perfectly calibrated
    probs = np.tile([0.8, 0.2], (10, 1))
    y_true = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(y_true, probs) == pytest.approx(0.0, abs=1e-12)
    # 60 % confident but always right: under-confident by 0.4
    assert expected_calibration_error(np.zeros(10, int), np.tile([0.6, 0.4], (10, 1))) == (
        pytest.approx(0.4))
    # two bins: 0.95 confident & 50 % right (gap 0.45), 0.65 confident & 100 % right (gap 0.35)
    probs = np.array([[0.95, 0.05]] * 2 + [[0.65, 0.35]] * 2)
    assert expected_calibration_error(np.array([0, 1, 0, 0]), probs) == pytest.approx(0.4)


def test_bootstrap_is_seeded_and_contains_the_point_estimate():
    y_true, probs = predictions(394, seed=1)
    first = compute_metrics(y_true, probs, CLASSES, seed=7)
    assert compute_metrics(y_true, probs, CLASSES, seed=7)["ci95"] == first["ci95"]
    assert compute_metrics(y_true, probs, CLASSES, seed=8)["ci95"] != first["ci95"]
    ci = first["ci95"]
    assert ci["resamples"] == 1000 and ci["seed"] == 7
    assert ci["accuracy"][0] < first["accuracy"] < ci["accuracy"][1]
    assert ci["macro_f1"][0] < first["macro_avg"]["f1"] < ci["macro_f1"][1]
    assert 0.03 < ci["accuracy"][1] - ci["accuracy"][0] < 0.15  # ~ ±1.96 sqrt(p(1-p)/394)


def test_vectorised_bootstrap_equals_sklearn_on_each_resample():
    y_true, probs = predictions(50, seed=2)
    y_pred = probs.argmax(axis=1)
    ci = bootstrap_ci(y_true, y_pred, 4, seed=3, n_bootstrap=200)
    rows = np.random.default_rng(3).integers(0, 50, size=(200, 50))
    accuracy = [accuracy_score(y_true[r], y_pred[r]) for r in rows]
    macro_f1 = [f1_score(y_true[r], y_pred[r], labels=range(4), average="macro", zero_division=0)
                for r in rows]
    assert ci["accuracy"] == pytest.approx(np.percentile(accuracy, [2.5, 97.5]).tolist())
    assert ci["macro_f1"] == pytest.approx(np.percentile(macro_f1, [2.5, 97.5]).tolist())


def test_mcnemar_hand_computed():
    a = np.array([1, 1, 1, 0, 0, 1, 0], bool)
    b = np.array([0, 0, 0, 0, 1, 1, 0], bool)
    # discordant: A only right on 3 images, B only on 1; p = 2 * (C(4,0) + C(4,1)) / 2^4 = 0.625
    assert mcnemar(a, b) == {"b": 3, "c": 1, "p_value": 0.625}
    assert mcnemar(b, a) == {"b": 1, "c": 3, "p_value": 0.625}
    assert mcnemar(a, a) == {"b": 0, "c": 0, "p_value": 1.0}


def test_mcnemar_equals_scipy_binomtest_on_a_large_case():
    rng = np.random.default_rng(0)
    a, b = rng.random(394) < 0.9, rng.random(394) < 0.8
    result = mcnemar(a, b)
    expected = binomtest(result["b"], result["b"] + result["c"], 0.5).pvalue
    assert result["p_value"] == pytest.approx(expected, rel=1e-9)
    assert result["p_value"] < 0.05


def test_mcnemar_needs_paired_results():
    with pytest.raises(ValueError, match="paired"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


@pytest.mark.parametrize("resamples", [0, 10**9])
def test_bootstrap_resamples_are_bounded_before_any_work(resamples):
    y_true, probs = predictions(394)
    with pytest.raises(ValueError, match=f"^{resamples} bootstrap resamples asked for, outside 1 to 10000$"):
        compute_metrics(y_true, probs, CLASSES, n_bootstrap=resamples)
    assert compute_metrics(y_true, probs, CLASSES, n_bootstrap=10_000)["ci95"]["resamples"] == 10_000
