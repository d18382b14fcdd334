"""`braintumor compare`: side-by-side tables of every finished run under a folder.

Runs are ranked only against runs scored on the same test files, and the best run of each such
group is tested against the others with McNemar's test, so small differences are not over-read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import yaml

from braintumor.core.errors import UserError
from braintumor.core.logs import get_logger
from braintumor.core.rundir import read_json, staged_dir, timestamp
from braintumor.results.cells import md_cell
from braintumor.results.metrics import LOWER_IS_BETTER, RANKABLE, compute_metrics, mcnemar, metric_value
from braintumor.results.reports import read_predictions, write_csv

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

log = get_logger(__name__)

RESULT_FILES = ("metrics.json", "predictions.csv")
AVERAGES = ("macro_precision", "macro_recall", "macro_f1",
            "weighted_precision", "weighted_recall", "weighted_f1")
SUMMARY_COLUMNS = (
    "group", "rank", "best", "label", "backbone", "folder", "n", "accuracy", "accuracy_ci_low",
    "accuracy_ci_high", *AVERAGES, "macro_f1_ci_low", "macro_f1_ci_high", "loss",
    "balanced_accuracy", "cohen_kappa", "roc_auc_macro", "ece",
)
PER_CLASS_COLUMNS = ("backbone", "group", "label", "class", "precision", "recall", "f1", "support",
                     "roc_auc")
MCNEMAR_COLUMNS = ("group", "best", "other", "n", "best_accuracy", "other_accuracy",
                   "only_best_correct", "only_other_correct", "p_value")


@dataclass
class Result:
    """Predictions of one completed run (or one of its evaluations) and their metrics."""

    label: str
    backbone: str
    folder: str  # relative to the compared folder
    files: list[str]
    correct: np.ndarray  # per file, in the order of `files`
    metrics: dict
    group: str = ""
    rank: int = 0

    def correct_on(self, files: Sequence[str]) -> np.ndarray:
        position = {file: i for i, file in enumerate(self.files)}
        return self.correct[[position[file] for file in files]]


def compare_runs(
    outputs_dir: Path, metric: str = "accuracy", out_dir: Path | None = None,
    include_eval: bool = False,
) -> Path:
    """Write comparison.md, summary/per_class/mcnemar CSVs and comparison.png; return the folder."""
    if metric not in RANKABLE:
        raise UserError(f"unknown metric {metric!r}; use one of: {', '.join(RANKABLE)}")
    if not outputs_dir.is_dir():
        raise UserError(f"{outputs_dir}: no such folder; pass the folder holding your runs")
    out_dir = out_dir or outputs_dir / f"comparison-{timestamp()}"
    results, unfinished = _collect(outputs_dir, include_eval)
    groups = _group_and_rank(results, metric)
    tables = _summary_rows(groups), _per_class_rows(groups), _mcnemar_rows(groups)
    report = _markdown(outputs_dir, metric, groups, tables, unfinished)

    with staged_dir(out_dir) as tmp:
        for name, columns, rows in zip(("summary", "per_class", "mcnemar"),
                                       (SUMMARY_COLUMNS, PER_CLASS_COLUMNS, MCNEMAR_COLUMNS),
                                       tables, strict=True):
            write_csv(tmp / f"{name}.csv", columns, ([row[c] for c in columns] for row in rows))
        (tmp / "comparison.md").write_text(report)
        _plot(groups, tmp / "comparison.png")
    log.info(_terminal_summary(groups, tables[0], unfinished, metric))
    log.info(f"wrote {out_dir}")
    return out_dir


def _collect(outputs_dir: Path, include_eval: bool) -> tuple[list[Result], list[dict]]:
    """Completed results, and the run or evaluation folders that are not (with what is missing)."""
    results, unfinished = [], []
    run_dirs = sorted(path.parent for path in outputs_dir.rglob("config.yaml"))
    if not run_dirs:
        raise UserError(f"{outputs_dir}: no runs found (no folder with config.yaml); "
                        "pass the outputs folder that `braintumor train` wrote to")
    for run in run_dirs:
        config = _read_config(run / "config.yaml")
        label = config.get("label") or config.get("name") or run.name
        backbone = str((config.get("model") or {}).get("backbone") or "unknown")
        state = _state(run / "status.json")
        candidates = [(run, label, state == "completed", state)]
        if include_eval:
            candidates += [(folder, f"{label} eval/{folder.name}", True, "incomplete evaluation")
                           for folder in sorted((run / "eval").glob("*")) if folder.is_dir()]
        for folder, name, finished, state_text in candidates:
            missing = [file for file in RESULT_FILES if not (folder / file).is_file()]
            relative = str(folder.relative_to(outputs_dir))
            if finished and not missing:
                results.append(_load_result(folder, relative, str(name), backbone))
            else:
                unfinished.append({"folder": relative, "label": str(name), "state": str(state_text),
                                   "missing": ", ".join(missing) or "-"})
    if not results:
        raise UserError(f"{outputs_dir}: no completed runs among {len(unfinished)} found; "
                        "finish or re-run them with `braintumor train`")
    labels = [result.label for result in results]
    for result in results:  # a label several results share gets their folders added
        if labels.count(result.label) > 1:
            result.label = f"{result.label} ({result.folder})"
    return results, unfinished


def _state(status_path: Path) -> str:
    if not status_path.exists():
        return "no status.json"
    status = read_json(status_path)
    return str(status.get("state", "unknown")) if isinstance(status, dict) else "not a JSON object"


def _read_config(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path}: unreadable YAML ({err}); restore it from the run") from err
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping of config keys; restore it from the run")
    return config


def _load_result(folder: Path, relative: str, label: str, backbone: str) -> Result:
    """Recompute the metrics from predictions.csv and check metrics.json says the same."""
    files, y_true, probs, classes = read_predictions(folder / "predictions.csv")
    path = folder / "metrics.json"
    stored = read_json(path)
    try:
        ci = stored["ci95"]
        metrics = compute_metrics(y_true, probs, classes, seed=int(ci["seed"]),
                                  n_bootstrap=int(ci["resamples"]))
        agree = (stored["n"] == metrics["n"] and stored["classes"] == classes
                 and all(math.isclose(stored[key], metrics[key], rel_tol=1e-9, abs_tol=1e-12)
                         for key in ("accuracy", "loss")))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: not a braintumor metrics file (bad or missing {err}); "
                        "re-create it with `braintumor evaluate`") from err
    if not agree:
        raise UserError(f"{path}: disagrees with the predictions.csv next to it; "
                        "re-create both with `braintumor evaluate`")
    correct = probs.argmax(axis=1) == y_true
    return Result(label, backbone, relative, files, correct, metrics)


def _group_and_rank(results: list[Result], metric: str) -> dict[str, list[Result]]:
    """Group results by their set of test files; rank within each group (ties share a rank)."""
    by_files: dict[frozenset[str], list[Result]] = {}
    for result in results:
        by_files.setdefault(frozenset(result.files), []).append(result)
    sign = 1 if metric in LOWER_IS_BETTER else -1

    def score(result: Result) -> tuple:  # sorts best first, undefined values last
        value = metric_value(result.metrics, metric)
        return (value is None, 0 if value is None else sign * value)

    groups = {}
    for number, members in enumerate(sorted(by_files.values(), key=len, reverse=True), start=1):
        splits = sorted({file.split("/")[0] for file in members[0].files if "/" in file})
        name = f"G{number} ({len(members[0].files)} images under {', '.join(splits) or '.'})"
        members = sorted(members, key=lambda result: (*score(result), result.label))
        for position, result in enumerate(members):
            tied = position > 0 and score(result) == score(members[position - 1])
            result.group, result.rank = name, members[position - 1].rank if tied else position + 1
        groups[name] = members
    return groups


def _summary_rows(groups: dict[str, list[Result]]) -> list[dict]:
    rows = []
    for members in groups.values():
        for result in members:
            m = result.metrics
            rows.append({
                "group": result.group, "rank": result.rank,
                "best": "yes" if result.rank == 1 else "",
                "label": result.label, "backbone": result.backbone, "folder": result.folder,
                "accuracy_ci_low": m["ci95"]["accuracy"][0],
                "accuracy_ci_high": m["ci95"]["accuracy"][1],
                "macro_f1_ci_low": m["ci95"]["macro_f1"][0],
                "macro_f1_ci_high": m["ci95"]["macro_f1"][1],
                "n": m["n"], **{name: metric_value(m, name) for name in RANKABLE},
            })
    return rows


def _per_class_rows(groups: dict[str, list[Result]]) -> list[dict]:
    results = [result for members in groups.values() for result in members]
    return [
        {"backbone": result.backbone, "group": result.group, "label": result.label,
         "class": name, **scores}
        for backbone in sorted({result.backbone for result in results})
        for result in results if result.backbone == backbone
        for name, scores in result.metrics["per_class"].items()
    ]


def _mcnemar_rows(groups: dict[str, list[Result]]) -> list[dict]:
    rows = []
    for name, (best, *others) in groups.items():
        files = sorted(best.files)  # align by file name, whatever order each run wrote them in
        for other in others:
            test = mcnemar(best.correct_on(files), other.correct_on(files))
            rows.append({"group": name, "best": best.label, "other": other.label, "n": len(files),
                         "best_accuracy": best.metrics["accuracy"],
                         "other_accuracy": other.metrics["accuracy"],
                         "only_best_correct": test["b"], "only_other_correct": test["c"],
                         "p_value": test["p_value"]})
    return rows


def _markdown(
    outputs_dir: Path, metric: str, groups: dict[str, list[Result]],
    tables: tuple[list[dict], list[dict], list[dict]], unfinished: list[dict],
) -> str:
    summary, per_class, mcnemar_rows = tables
    direction = "lower" if metric in LOWER_IS_BETTER else "higher"
    resamples = {result.metrics["ci95"]["resamples"]
                 for members in groups.values() for result in members}
    lines = [
        f"# Comparison of runs under `{outputs_dir}`", "",
        f"Ranked by **{metric}** ({direction} is better) within each group; a group holds the runs "
        "scored on exactly the same test files, and runs of different groups are never ranked "
        f"together. Intervals are 95 % percentile-bootstrap intervals over test images "
        f"({', '.join(map(str, sorted(resamples)))} resamples). McNemar p-values test the best run "
        "of each group against each other run on the same images (exact two-sided binomial, "
        "not adjusted for multiple comparisons); p ≥ 0.05 means the difference may well be "
        "noise.", "",
        "![comparison](comparison.png)", "", "## Summary", "",
    ]
    for name in groups:
        rows = [row for row in summary if row["group"] == name]
        lines += [f"### {name}", "", _summary_markdown(rows), ""]
    lines += ["## McNemar tests against the best run of each group", ""]
    lines += [_table(MCNEMAR_COLUMNS, [[_cell(row[c]) for c in MCNEMAR_COLUMNS]
                                       for row in mcnemar_rows]) if mcnemar_rows
              else "Every group holds a single run; nothing to test.", ""]
    lines += ["## Per-class precision / recall / F1 by backbone", ""]
    for backbone in dict.fromkeys(row["backbone"] for row in per_class):
        lines += [f"### {backbone}", "", _per_class_markdown(
            [row for row in per_class if row["backbone"] == backbone]), ""]
    if unfinished:
        columns = ("folder", "label", "state", "missing")
        lines += ["## Incomplete or failed runs (not compared)", "",
                  _table(columns, [[row[c] for c in columns] for row in unfinished]), ""]
    return "\n".join(lines)


def _summary_markdown(rows: list[dict]) -> str:
    header = ("rank", "best", "label", "backbone", "accuracy [95% CI]", "macro P", "macro R",
              "macro F1", "weighted P", "weighted R", "weighted F1", "loss", "bal. acc.",
              "kappa", "ROC-AUC", "ECE")
    body = [[row["rank"], row["best"], row["label"], row["backbone"],
             f"{row['accuracy']:.4f} [{row['accuracy_ci_low']:.4f}, {row['accuracy_ci_high']:.4f}]",
             *(_cell(row[c]) for c in (*AVERAGES, "loss", "balanced_accuracy", "cohen_kappa",
                                       "roc_auc_macro", "ece"))]
            for row in rows]
    return _table(header, body)


def _per_class_markdown(rows: list[dict]) -> str:
    """One row per class, each run's precision / recall / F1 side by side."""
    runs = list(dict.fromkeys(row["label"] for row in rows))
    classes = list(dict.fromkeys(row["class"] for row in rows))
    scores = {(row["label"], row["class"]): row for row in rows}
    header = ["class", *(f"{run} {stat}" for run in runs for stat in ("P", "R", "F1"))]
    body = [[name, *(_cell(scores[run, name][stat]) if (run, name) in scores else ""
                     for run in runs for stat in ("precision", "recall", "f1"))]
            for name in classes]
    return _table(header, body)


def _terminal_summary(
    groups: dict[str, list[Result]], summary: list[dict], unfinished: list[dict], metric: str,
) -> str:
    parts = [f"ranked by {metric}"]
    for name in groups:
        parts += [name, _summary_markdown([row for row in summary if row["group"] == name])]
    if unfinished:
        parts.append("not compared: " + "; ".join(
            f"{row['folder']} ({row['state']}, missing {row['missing']})" for row in unfinished))
    return "\n".join(parts)


def _table(header: Sequence, rows: Sequence[Sequence]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(md_cell(cell) for cell in line) + " |" for line in lines)


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.4f}"
    return str(value)


def _plot(groups: dict[str, list[Result]], out_png: Path) -> None:
    """Accuracy with 95 % whiskers, and a run x class heat map of recall."""
    results = [result for members in groups.values() for result in members]
    names = [f"{result.group.split()[0]} {result.label}" for result in results]
    classes = list(dict.fromkeys(c for result in results for c in result.metrics["per_class"]))
    recall = np.array([[result.metrics["per_class"].get(c, {}).get("recall", np.nan)
                        for c in classes] for result in results])
    accuracy = np.array([result.metrics["accuracy"] for result in results])
    interval = np.array([result.metrics["ci95"]["accuracy"] for result in results])
    fig, (left, right) = plt.subplots(1, 2, figsize=(8 + 1.5 * len(classes),
                                                      2 + 0.45 * len(results)))
    rows = np.arange(len(results))
    left.errorbar(accuracy, rows, xerr=[accuracy - interval[:, 0], interval[:, 1] - accuracy],
                  fmt="o", capsize=4)
    left.set(yticks=rows, yticklabels=names, xlabel="test accuracy (95% bootstrap CI)",
             title="accuracy")
    left.invert_yaxis()
    right.imshow(recall, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (row, col), value in np.ndenumerate(recall):
        right.text(col, row, "" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                   color="white" if value < 0.5 else "black")
    right.set(title="recall per class", xticks=range(len(classes)), xticklabels=classes,
              yticks=rows, yticklabels=names)
    right.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
