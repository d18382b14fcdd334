"""Report files of the run-directory contract (metrics, classification report, confusion matrix,
predictions, curves; their names: core/run.py), plus the readers compare needs."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from sklearn.metrics import classification_report

from braintumor.core.atomic import atomic_output, write_json, write_text
from braintumor.core.errors import UserError, describe
from braintumor.core.run import Reports
from braintumor.results.cells import csv_escape, csv_unescape
from braintumor.results.metrics import BOOTSTRAPPED, METRIC, METRICS, compute_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

PREDICTION_COLUMNS = ("file", "true", "predicted")
# after the p_<class> columns: the out-of-distribution verdict and score, empty where the run has no detector
# (an ensemble, a run not calibrated); predictions.csv files written before them end with the p_<class> columns
OOD_COLUMNS = ("in_distribution", "ood_score")


def write_evaluation(
    out_dir: Path, files: Sequence[str], y_true: np.ndarray, probs: np.ndarray,
    classes: Sequence[str], seed: int = 0, extra: dict | None = None,
    in_distribution: np.ndarray | None = None, ood_scores: np.ndarray | None = None,
) -> dict:
    """Write the four evaluation reports into ``out_dir`` and return what went into metrics.json."""
    # float64 throughout: predictions.csv stores float64 exactly, so re-reading gives these metrics
    probs = np.asarray(probs, dtype=np.float64)
    metrics = {**compute_metrics(y_true, probs, classes, seed=seed), **(extra or {})}
    out = Reports(out_dir)
    write_json(out.metrics, metrics)
    write_text(out.classification_report, _classification_report(y_true, probs.argmax(axis=1), classes, metrics))
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classes, out.confusion_matrix)
    write_predictions(out.predictions, files, y_true, probs, classes, in_distribution, ood_scores)
    return metrics


# file names that are not valid UTF-8 arrive as surrogate escapes; this writes (and reads) their own bytes
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV atomically; Python floats are written as repr, which reads back to the same value.

    Text cells are escaped against spreadsheet formulas (results.cells); read them with csv_unescape.
    """
    with atomic_output(path) as tmp, tmp.open("w", **ENCODING) as handle:
        writer = csv.writer(handle)
        writer.writerow([csv_escape(cell) for cell in header])
        writer.writerows([csv_escape(cell) for cell in row] for row in rows)


def prediction_header(classes: Sequence[str]) -> list[str]:
    return [*PREDICTION_COLUMNS, *(f"p_{name}" for name in classes), *OOD_COLUMNS]


def ood_cells(in_distribution: bool | None, ood_score: float | None) -> list:
    return ["" if in_distribution is None else str(bool(in_distribution)).lower(),
            "" if ood_score is None else float(ood_score)]


def ood_pairs(count: int, in_distribution: np.ndarray | None,
              ood_scores: np.ndarray | None) -> list[tuple[bool | None, float | None]]:
    """(in distribution, out-of-distribution score) per row; (None, None) for a run without a detector."""
    if in_distribution is None or ood_scores is None:
        return [(None, None)] * count
    return list(zip(in_distribution.tolist(), ood_scores.tolist(), strict=True))


def write_predictions(
    path: Path, files: Sequence[str], y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str],
    in_distribution: np.ndarray | None = None, ood_scores: np.ndarray | None = None,
) -> None:
    predicted = np.asarray(probs).argmax(axis=1)
    write_csv(path, prediction_header(classes), (
        [file, classes[true], classes[pred], *row, *ood_cells(verdict, score)]
        for file, true, pred, row, (verdict, score) in zip(
            files, y_true, predicted, np.asarray(probs, np.float64).tolist(),
            ood_pairs(len(files), in_distribution, ood_scores), strict=True)
    ))


def published_folder(file: str) -> str | None:
    """The folder of the data root a predictions.csv file name starts with (Training, Testing), None for a name
    without one: each published folder comes from its own sources."""
    folder, sep, _ = file.partition("/")
    return folder if sep else None


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Inverse of write_predictions: (files, y_true indices, (N, C) probabilities, classes)."""
    try:
        with path.open(**ENCODING) as handle:
            header, *rows = [[csv_unescape(cell) for cell in row] for row in csv.reader(handle)]
        end = len(header) - len(OOD_COLUMNS) if tuple(header[-len(OOD_COLUMNS):]) == OOD_COLUMNS else len(header)
        classes = [column.removeprefix("p_") for column in header[len(PREDICTION_COLUMNS):end]]
        _check(tuple(header[:3]) == PREDICTION_COLUMNS and classes
               and all(c.startswith("p_") for c in header[3:end]), "unexpected header")
        _check(rows and all(len(row) == len(header) for row in rows), "no rows or ragged rows")
        files = [row[0] for row in rows]
        _check(len(set(files)) == len(files), "a file is listed twice")
        index = {name: k for k, name in enumerate(classes)}
        y_true = np.array([index[row[1]] for row in rows])
        probs = np.array([[float(value) for value in row[3:end]] for row in rows])
        _check(np.isfinite(probs).all(), "non-finite probability")
        _check([classes[k] for k in probs.argmax(axis=1)] == [row[2] for row in rows],
               "'predicted' is not the most probable class")
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, KeyError) as err:
        raise UserError(f"{path}: corrupt predictions file ({describe(err)}); "
                        "run the command that wrote it again (train or evaluate)") from err
    return files, y_true, probs, classes


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], out_png: Path) -> None:
    """Counts next to row-normalised rates (recall on the diagonal)."""
    row_sums = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    fig, axes = plt.subplots(1, 2, figsize=(3 + 2.2 * len(classes), 1.5 + 1.1 * len(classes)))
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "d"),
                                   (axes[1], rates, "row-normalised", ".2f")):
        ax.imshow(values, cmap="Blues", vmin=0)
        for (row, col), value in np.ndenumerate(values):
            color = "white" if value > values.max() / 2 else "black"
            ax.text(col, row, format(value, fmt), ha="center", va="center", color=color)
        ax.set(title=title, xlabel="predicted", ylabel="true", xticks=range(len(classes)),
               yticks=range(len(classes)), xticklabels=classes, yticklabels=classes)
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_curves(history_csv: Path, out_png: Path) -> None:
    """Loss and accuracy per epoch, training against validation."""
    with history_csv.open(newline="") as handle:
        history = list(csv.DictReader(handle))
    epochs = [int(row["epoch"]) for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ("loss", "accuracy"), strict=True):
        for column, legend in ((name, "training"), (f"val_{name}", "validation")):
            if history and history[0].get(column):
                ax.plot(epochs, [float(row[column]) for row in history], marker="o", label=legend)
        ax.set(title=name, xlabel="epoch")
        ax.legend()
    fig.tight_layout()
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], metrics: dict,
) -> str:
    """sklearn's per-class table, a line per other metric, the bootstrap intervals, the TTA / leak-free parts."""
    table = classification_report(y_true, y_pred, labels=range(len(classes)), target_names=classes,
                                  digits=4, zero_division=0)
    ci = metrics["ci95"]
    lines = [(metric.title, _figure(metric.value(metrics))) for metric in METRICS if metric.report_line]
    lines += [(f"{METRIC[name].title} 95% CI", f"[{ci[name][0]:.4f}, {ci[name][1]:.4f}] "
               f"(bootstrap, {ci['resamples']} resamples, seed {ci['seed']})") for name in BOOTSTRAPPED]
    width = max(len(title) for title, _ in lines) + 2
    return (f"{table}\n" + "".join(f"{title:<{width}}{figure}\n" for title, figure in lines)
            + "".join(_subset_report(title, metrics[key], classes) for key, title in (
                ("tta", "With horizontal-flip test-time augmentation, the mean of each image and its mirror"),
                ("leak_free", "Leak-free subset, the test images without an exact or near duplicate in Training"),
            ) if key in metrics)
            + "".join(_subset_report(f"The images from {folder}/ (each published folder is another source)", part,
                                     classes) for folder, part in metrics.get("by_folder", {}).items())
            + (_calibration_report(metrics["calibration"]) if "calibration" in metrics else "")
            + (_ood_report(metrics["ood"]) if "ood" in metrics else ""))


def _calibration_report(cal: dict) -> str:
    return (f"\nTemperature scaling (T = {cal['temperature']:.4f}, fitted on the validation images): "
            f"ECE (15 bins) {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after; "
            f"loss (cross-entropy) {cal['nll_before']:.4f} before, {cal['nll_after']:.4f} after\n")


def _ood_report(ood: dict) -> str:
    """The share of images whose out-of-distribution score is above the run's threshold, overall and per class."""
    rows = "".join(f"  {name}: " + ("no images" if part["flagged"] is None else
                                    f"{part['flagged']:.1%} of {part['n']}") + "\n"
                   for name, part in ood["per_class"].items())
    return (f"\nFlagged as unlike the training data (out-of-distribution score above {ood['threshold']:.4f}): "
            f"{ood['flagged']:.1%}\n{rows}")


def _figure(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _subset_report(title: str, metrics: dict, classes: Sequence[str]) -> str:
    """The same figures for a variant of the evaluation (TTA, leak-free subset, one folder's images), from its metrics
    dict."""
    width = max(len("weighted avg"), *map(len, classes))
    head = f"{'':>{width}}  precision    recall  f1-score   support"
    rows = [f"{name:>{width}}  {s['precision']:9.4f} {s['recall']:9.4f} {s['f1']:9.4f} {s['support']:9d}"
            for name, s in metrics["per_class"].items()]
    rows += [f"{label:>{width}}  {a['precision']:9.4f} {a['recall']:9.4f} {a['f1']:9.4f} {a['support']:9d}"
             for label, a in (("macro avg", metrics["macro_avg"]), ("weighted avg", metrics["weighted_avg"]))]
    low, high = metrics["ci95"]["accuracy"]
    excluded = f"; {metrics['excluded']} test images with a Training twin left out" if "excluded" in metrics else ""
    return (f"\n{title} ({metrics['n']} images{excluded})\n\n{head}\n\n" + "\n".join(rows) + "\n\n"
            f"accuracy              {metrics['accuracy']:.4f}  95% CI [{low:.4f}, {high:.4f}]\n"
            f"loss (cross-entropy)  {metrics['loss']:.4f}\n")


def _check(condition: object, problem: str) -> None:
    if not condition:
        raise ValueError(problem)
