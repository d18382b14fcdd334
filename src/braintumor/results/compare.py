"""`braintumor compare`: side-by-side tables of every finished run under a folder (a sweep folder too).

Runs are ranked only against runs scored on the same test files, and the best run of each such
group is tested against the others with McNemar's test, so small differences are not over-read.
Runs whose configs differ only in the seed form one configuration: its mean ± std and min–max over
seeds are reported, and the study's per-backbone tables are built from the means. The folds of a k-fold
cross-validation (`data.protocol: kfold`) are tested on different images, so they rank in groups of their own, but
pool into one configuration like seeds; runs of two protocols never pool (the protocol is part of the config).
A run that cannot be compared (unfinished, damaged, missing files) is listed with what is wrong and what to do, and
the others are compared without it.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import matplotlib
import numpy as np

from braintumor.core import run as contract  # the run folder's file names
from braintumor.core.config import WITHIN_CONFIGURATION, parse_config, read_yaml
from braintumor.core.errors import UserError, describe
from braintumor.core.logs import get_logger
from braintumor.core.rundir import read_json, staged_dir, timestamp
from braintumor.results.cells import md_cell
from braintumor.results.metrics import BOOTSTRAPPED, METRIC, METRICS, compute_metrics, mcnemar
from braintumor.results.reports import published_folder, read_predictions, write_csv

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

log = get_logger(__name__)

RESULT_FILES = (contract.METRICS, contract.PREDICTIONS)
TRAIN_MINUTES = "train_minutes"  # training wall time of a run (metrics.json's train_seconds / 60)
# mean ± std, min–max per configuration
SEED_STATS = ("accuracy", "macro_f1", "glioma_recall", "leak_free", TRAIN_MINUTES)
SUMMARY_COLUMNS = (
    "group", "rank", "best", "label", "backbone", "protocol", "folder", "n",
    *(column for metric in METRICS for column in (
        metric.name, *((f"{metric.name}_ci_low", f"{metric.name}_ci_high") if metric.name in BOOTSTRAPPED else ()))),
    "seed",
)
CONFIGURATION_COLUMNS = ("group", "label", "backbone", "protocol", "runs", "seeds",
                         *(f"{name}_{stat}" for name in SEED_STATS for stat in ("mean", "std", "min", "max")))
PER_CLASS_COLUMNS = ("backbone", "group", "label", "class", "precision", "recall", "f1", "support",
                     "roc_auc")
MCNEMAR_COLUMNS = ("group", "best", "other", "n", "best_accuracy", "other_accuracy",
                   "only_best_correct", "only_other_correct", "p_value")
NOT_COMPARED_COLUMNS = ("folder", "label", "state", "problem", "action")
WRITE_AGAIN = "run the command that wrote it again (train or evaluate)"  # the fix of a damaged result file


@dataclass
class Result:
    """Predictions of one completed run (or one of its evaluations) and their metrics."""

    label: str
    backbone: str
    folder: str  # relative to the compared folder
    files: list[str]
    correct: np.ndarray  # per file, in the order of `files`
    metrics: dict  # recomputed from predictions.csv, plus the stored leak_free / tta parts
    configuration: str = ""  # the config without WITHIN_CONFIGURATION: equal for runs that differ only in seed or fold
    settings: dict = field(default_factory=dict)  # that config as dotted key -> value, to say how configurations differ
    config_label: str = ""  # the label before a folder name is added to tell runs apart
    seed: int | None = None
    protocol: str = "official"  # data.protocol, or split_file
    pool: str = ""  # where its configuration pools: its group, or for kfold every fold's group (see _configurations)
    group: str = ""
    rank: int = 0

    def correct_on(self, files: Sequence[str]) -> np.ndarray:
        position = {file: i for i, file in enumerate(self.files)}
        return self.correct[[position[file] for file in files]]


@dataclass
class Configuration:
    """The runs of one configuration (differing only in seed) within one group of test files."""

    label: str
    backbone: str
    group: str
    members: list[Result] = field(default_factory=list)

    def values(self, name: str) -> list[float]:
        return [v for v in (_value(result.metrics, name) for result in self.members) if v is not None]

    def seeds(self) -> str:
        return " ".join(map(str, sorted({result.seed for result in self.members}, key=str)))

    @property
    def protocol(self) -> str:
        return self.members[0].protocol

    def mean_metrics(self) -> dict:
        """The study's figures (per class, averages, accuracy, loss) as the mean over the seeds."""
        first = self.members[0].metrics

        def mean(get) -> float:
            return float(np.mean([get(result.metrics) for result in self.members]))

        return {
            "per_class": {name: {stat: mean(lambda m, n=name, s=stat: m["per_class"][n][s])
                                 for stat in ("precision", "recall", "f1")} for name in first["per_class"]},
            **{average: {stat: mean(lambda m, a=average, s=stat: m[a][s]) for stat in ("precision", "recall", "f1")}
               for average in ("macro_avg", "weighted_avg")},
            "accuracy": mean(lambda m: m["accuracy"]), "loss": mean(lambda m: m["loss"]),
        }


def compare_runs(
    outputs_dir: Path, metric: str = "accuracy", out_dir: Path | None = None,
    include_eval: bool = False, study: bool = False,
) -> Path:
    """Write comparison.md, summary/configurations/per_class/mcnemar CSVs and comparison.png; return the folder.

    `study`: print the study's published figures beside ours in its per-backbone tables.
    """
    if metric not in METRIC:
        raise UserError(f"unknown metric {metric!r}; use one of: {', '.join(METRIC)}")
    if not outputs_dir.is_dir():
        raise UserError(f"{outputs_dir}: no such folder; pass the folder holding your runs")
    out_dir = out_dir or outputs_dir / f"comparison-{timestamp()}"
    results, not_compared = _collect(outputs_dir, include_eval)
    groups = _group_and_rank(results, metric)
    configurations = _configurations(groups)
    tables = _summary_rows(groups), _per_class_rows(groups), _mcnemar_rows(groups)
    seed_rows = _configuration_rows(configurations)
    report = _markdown(outputs_dir, metric, groups, tables, not_compared, configurations, study)

    with staged_dir(out_dir) as tmp:
        for name, columns, rows in zip(("summary", "per_class", "mcnemar", "configurations", "not_compared"),
                                       (SUMMARY_COLUMNS, PER_CLASS_COLUMNS, MCNEMAR_COLUMNS, CONFIGURATION_COLUMNS,
                                        NOT_COMPARED_COLUMNS),
                                       (*tables, seed_rows, not_compared), strict=True):
            write_csv(tmp / f"{name}.csv", columns, ([row[c] for c in columns] for row in rows))
        (tmp / "comparison.md").write_text(report)
        _plot(groups, tmp / "comparison.png")
    log.info(_terminal_summary(groups, tables[0], not_compared, metric, configurations))
    log.info(f"wrote {out_dir}")
    return out_dir


def _collect(outputs_dir: Path, include_eval: bool) -> tuple[list[Result], list[dict]]:
    """The results that can be compared, and a row for each run or evaluation folder that cannot."""
    results, not_compared = [], []
    config_paths = sorted(outputs_dir.rglob(contract.CONFIG))
    if not config_paths:
        raise UserError(f"{outputs_dir}: no runs found (no folder with config.yaml); "
                        "pass the outputs folder that `braintumor train` wrote to")
    for config_path in config_paths:
        found, left_out = _read_run(config_path, outputs_dir, include_eval)
        results += found
        not_compared += left_out
    if not results:
        shown = "; ".join(map(_not_compared_text, not_compared[:3]))
        more = f"; and {len(not_compared) - 3} more" if len(not_compared) > 3 else ""
        raise UserError(f"{outputs_dir}: none of the {len(not_compared)} run or evaluation folders found can be "
                        f"compared: {shown}{more}")
    labels = [result.label for result in results]
    for result in results:  # a label several results share gets their folders added
        if labels.count(result.label) > 1:
            result.label = f"{result.label} ({result.folder})"
    return results, not_compared


def _read_run(config_path: Path, outputs_dir: Path, include_eval: bool) -> tuple[list[Result], list[dict]]:
    """The results of one run folder (and its evaluations with `include_eval`), and the rows of those left out."""
    run = config_path.parent
    retrain = f"train its config again (braintumor train {config_path}), or remove the folder"
    try:
        config = _read_config(config_path)
    except UserError as err:
        return [], [_not_compared(run, outputs_dir, run.name, "unknown", err,
                                  "remove the folder: without its config it can be neither resumed nor retrained")]
    label = str(config.get("label") or config.get("name") or run.name)
    backbone = str((config.get("model") or {}).get("backbone") or "unknown")
    try:
        state = contract.Run(run).state() or f"no {contract.STATUS}"
    except UserError as err:
        return [], [_not_compared(run, outputs_dir, label, "unknown", err, retrain)]
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    protocol = "split_file" if data.get("split_file") else str(data.get("protocol", "official"))
    settings = _without(_with_defaults(config, config_path), WITHIN_CONFIGURATION)
    configuration = json.dumps(settings, sort_keys=True, default=str)
    # the folds of one k-fold cross-validation test different images: their configuration pools over groups
    pool = f"CV{data.get('folds')} ({data.get('folds')} folds of {data.get('root')}, seeds pooled)" \
        if protocol == "kfold" else ""
    results, not_compared = [], []
    if state != "completed":
        not_compared.append(_not_compared(
            run, outputs_dir, label, state, f"training did not complete (status: {state})",
            f"continue it with braintumor train --resume {run} (unless it is still training), or remove the folder"))
    candidates = [(run, label, configuration, retrain)] if state == "completed" else []
    if include_eval:  # evaluations of several seeds' runs on one split form their own configuration
        candidates += [(folder, f"{label} eval/{folder.name}", f"{configuration} eval/{folder.name.rsplit('-', 2)[0]}",
                        f"evaluate the run again (braintumor evaluate --run {run} writes a new folder), "
                        "then remove this one")
                       for folder in (evaluation.path for evaluation in contract.Run(run).evaluations())]
    for folder, name, key, action in candidates:
        folder_state = state if folder == run else "evaluation"
        missing = [file for file in RESULT_FILES if not (folder / file).is_file()]
        if missing:
            not_compared.append(_not_compared(folder, outputs_dir, name, folder_state,
                                              f"no {' or '.join(missing)}", action))
            continue
        try:
            result = _load_result(folder, str(folder.relative_to(outputs_dir)), name, backbone)
        except (UserError, OSError) as err:  # OSError: e.g. a file without read permission
            not_compared.append(_not_compared(folder, outputs_dir, name, folder_state, err, action))
            continue
        result.configuration, result.config_label, result.settings = key, name, _dotted(settings)
        result.seed, result.protocol, result.pool = config.get("seed"), protocol, pool
        results.append(result)
    return results, not_compared


def _not_compared(folder: Path, outputs_dir: Path, label: str, state: str, problem: str | BaseException,
                  action: str) -> dict:
    text = problem if isinstance(problem, str) else " ".join(str(problem).split()) or type(problem).__name__
    if isinstance(problem, UserError):  # "<what is wrong>; <how to fix it>": the fix here depends on the folder
        text = text.rpartition("; ")[0] or text
    return {"folder": str(folder.relative_to(outputs_dir)), "label": label, "state": state, "problem": text,
            "action": action}


def _not_compared_text(row: dict) -> str:
    return f"{row['folder']}: {row['problem']}; {row['action']}"


def _read_config(path: Path) -> dict:
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping of config keys; restore it from the run")
    return config


def _load_result(folder: Path, relative: str, label: str, backbone: str) -> Result:
    """Recompute the metrics from predictions.csv and check metrics.json says the same."""
    files, y_true, probs, classes = read_predictions(folder / contract.PREDICTIONS)
    path = folder / contract.METRICS
    stored = read_json(path)
    try:
        ci = stored["ci95"]
        seed, resamples = int(ci["seed"]), int(ci["resamples"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: not a braintumor metrics file (bad or missing {describe(err)}); "
                        f"{WRITE_AGAIN}") from err
    try:  # the resamples are bounded here, before any work
        metrics = compute_metrics(y_true, probs, classes, seed=seed, n_bootstrap=resamples)
    except ValueError as err:
        raise UserError(f"{path}: {describe(err)}; {WRITE_AGAIN}") from err
    try:
        agree = (stored["n"] == metrics["n"] and stored["classes"] == classes
                 and all(math.isclose(stored[key], metrics[key], rel_tol=1e-9, abs_tol=1e-12)
                         for key in ("accuracy", "loss")))
    except (KeyError, TypeError) as err:
        raise UserError(f"{path}: not a braintumor metrics file (bad or missing {describe(err)}); "
                        f"{WRITE_AGAIN}") from err
    if not agree:
        raise UserError(f"{path}: disagrees with the predictions.csv next to it; one of them was changed")
    correct = probs.argmax(axis=1) == y_true
    for part in ("leak_free", "tta", "calibration"):  # computed from data predictions.csv does not hold
        if isinstance(stored.get(part), dict):
            metrics[part] = stored[part]
    for name in ("leak_free", "ece_calibrated"):
        if not isinstance(METRIC[name].value(metrics), float | int | None):
            raise UserError(f"{path}: {'.'.join(METRIC[name].path)} is not a number; {WRITE_AGAIN}")
    if isinstance(stored.get("train_seconds"), (int, float)):  # training runs only, not evaluations
        metrics["train_seconds"] = float(stored["train_seconds"])
    return Result(label, backbone, relative, files, correct, metrics)


def _with_defaults(config: dict, path: Path) -> dict:
    """The config with the schema's defaults filled in: a run recorded before a key existed pools with a later run
    that has the key at its default. A config the schema no longer reads is compared as written."""
    try:
        return parse_config(copy.deepcopy(config), str(path)).to_dict()
    except UserError:
        return config


def _dotted(config: dict, prefix: str = "") -> dict:
    """A nested config as {"model.norm": "ibn", ...}."""
    flat = {}
    for key, value in config.items():
        flat.update(_dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _without(config: dict, dotted_keys: Sequence[str], prefix: str = "") -> dict:
    """`config` without the keys `dotted_keys` name (`data.fold` is fold inside data), at any depth."""
    return {key: _without(value, dotted_keys, f"{prefix}{key}.") if isinstance(value, dict) else value
            for key, value in config.items() if f"{prefix}{key}" not in dotted_keys}


def _value(metrics: dict, name: str) -> float | None:
    """A declared metric, glioma_recall (None without a glioma class) or train_minutes (None without a time)."""
    if name == TRAIN_MINUTES:
        return metrics["train_seconds"] / 60 if "train_seconds" in metrics else None
    if name == "glioma_recall":
        glioma = [scores for cls, scores in metrics["per_class"].items() if _class_key(cls) == "glioma"]
        return glioma[0]["recall"] if glioma else None
    return METRIC[name].value(metrics)


def _class_key(name: str) -> str:
    """glioma_tumor, 'glioma' -> glioma; no_tumor, 'no tumour' -> no: our class folders and the study's names."""
    return re.sub(r"[_ ]tumou?r$", "", name.lower())


def _group_and_rank(results: list[Result], metric: str) -> dict[str, list[Result]]:
    """Group results by their set of test files; rank within each group (ties share a rank)."""
    by_files: dict[frozenset[str], list[Result]] = {}
    for result in results:
        by_files.setdefault(frozenset(result.files), []).append(result)
    sign = -1 if METRIC[metric].higher_is_better else 1

    def score(result: Result) -> tuple:  # sorts best first, undefined values last
        value = _value(result.metrics, metric)
        return (value is None, 0 if value is None else sign * value)

    groups = {}
    for number, members in enumerate(sorted(by_files.values(), key=len, reverse=True), start=1):
        splits = sorted({published_folder(file) for file in members[0].files} - {None})
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
                "label": result.label, "backbone": result.backbone, "protocol": result.protocol,
                "folder": result.folder, "n": m["n"],
                **{metric.name: metric.value(m) for metric in METRICS},
                **{f"{name}_ci_{end}": m["ci95"][name][i] for name in BOOTSTRAPPED
                   for i, end in enumerate(("low", "high"))},
                "seed": result.seed,
            })
    return rows


def _configurations(groups: dict[str, list[Result]]) -> list[Configuration]:
    """Runs grouped by configuration within each group of test files, in rank order of their best run."""
    configurations: dict[tuple[str, str], Configuration] = {}
    for name, members in groups.items():
        for result in members:
            pool = result.pool or name
            key = (pool, result.configuration)
            if key not in configurations:
                configurations[key] = Configuration(result.config_label, result.backbone, pool)
            configurations[key].members.append(result)
    _tell_apart(list(configurations.values()))
    return list(configurations.values())


def _tell_apart(configurations: list[Configuration], shown: int = 3) -> None:
    """Configurations of one group that share a label (one config run with --set changes) get the settings in which
    they differ added to it, e.g. `scratch [model.norm=batch]`: the first `shown` of them, then how many more."""
    sharing: dict[tuple[str, str], list[Configuration]] = {}
    for configuration in configurations:
        sharing.setdefault((configuration.group, configuration.label), []).append(configuration)
    for same in (same for same in sharing.values() if len(same) > 1):
        settings = [same_config.members[0].settings for same_config in same]
        differ = sorted(key for key in set().union(*settings) if len({repr(s.get(key)) for s in settings}) > 1)
        if not differ:  # keys that differ outside the settings (an evaluation's suffix): nothing to name
            continue
        for configuration, setting in zip(same, settings, strict=True):
            named = [f"{key}={setting.get(key)}" for key in differ[:shown]]
            more = [f"{len(differ) - shown} more"] if len(differ) > shown else []
            configuration.label = f"{configuration.label} [{', '.join(named + more)}]"


def _configuration_rows(configurations: list[Configuration]) -> list[dict]:
    rows = []
    for configuration in configurations:
        row = {"group": configuration.group, "label": configuration.label, "backbone": configuration.backbone,
               "protocol": configuration.protocol, "runs": len(configuration.members),
               "seeds": configuration.seeds()}
        for name in SEED_STATS:
            values = configuration.values(name)
            row |= {f"{name}_mean": float(np.mean(values)) if values else None,
                    # sample standard deviation: the spread a new seed would show; undefined for one run
                    f"{name}_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                    f"{name}_min": min(values) if values else None, f"{name}_max": max(values) if values else None}
        rows.append(row)
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
    tables: tuple[list[dict], list[dict], list[dict]], not_compared: list[dict],
    configurations: list[Configuration], study: bool,
) -> str:
    summary, per_class, mcnemar_rows = tables
    direction = "higher" if METRIC[metric].higher_is_better else "lower"
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
    lines += ["## Configurations over seeds", "",
              "Runs whose configs differ only in `seed` form one configuration: mean ± sample standard "
              "deviation [min – max] over its runs. The folds of a k-fold cross-validation (`data.protocol: "
              "kfold`, group CV<K>) pool the same way, over folds and seeds. Two protocols never pool. With a few "
              "hundred test images, a difference smaller than the spread over seeds is not a finding.", "",
              _configurations_markdown(configurations), ""]
    lines += ["## McNemar tests against the best run of each group", ""]
    lines += [_table(MCNEMAR_COLUMNS, [[_cell(row[c]) for c in MCNEMAR_COLUMNS]
                                       for row in mcnemar_rows]) if mcnemar_rows
              else "Every group holds a single run; nothing to test.", ""]
    lines += ["## The study's tables: per-class precision / recall / F1 by backbone (mean over seeds)", "",
              "As in the study's slides: one table per backbone, its experiments side by side, then the macro and "
              "weighted averages, accuracy and test loss; our extra rows (bootstrap interval or spread over "
              "seeds, leak-free accuracy) after them."
              + (" Rows marked *study* hold the published figures (shipped with the package) of the experiment "
                 "with the same label." if study else ""), ""]
    for backbone in dict.fromkeys(configuration.backbone for configuration in configurations):
        # sorted by label: experiments I, II, III in order
        members = sorted((c for c in configurations if c.backbone == backbone), key=lambda c: (c.label, c.group))
        lines += [f"### {backbone}", "", _study_layout(members, len({c.group for c in members}) > 1, study), ""]
    lines += ["Per-run per-class figures: per_class.csv.", ""]
    if not_compared:
        lines += ["## Not compared: unfinished or damaged runs (also in not_compared.csv)", "",
                  _table(NOT_COMPARED_COLUMNS, [[row[c] for c in NOT_COMPARED_COLUMNS] for row in not_compared]), ""]
    return "\n".join(lines)


def _summary_markdown(rows: list[dict]) -> str:
    header = ("rank", "best", "label", "backbone", "protocol",
              *(metric.label + (" [95% CI]" if metric.name in BOOTSTRAPPED else "") for metric in METRICS))

    def cell(row: dict, name: str) -> str:
        if name in BOOTSTRAPPED:
            return f"{row[name]:.4f} [{row[f'{name}_ci_low']:.4f}, {row[f'{name}_ci_high']:.4f}]"
        return _cell(row[name])

    body = [[row["rank"], row["best"], row["label"], row["backbone"], row["protocol"],
             *(cell(row, metric.name) for metric in METRICS)]
            for row in rows]
    return _table(header, body)


def _configurations_markdown(configurations: list[Configuration]) -> str:
    header = ("group", "label", "backbone", "protocol", "runs", "seeds", "accuracy", "macro F1", "glioma recall",
              "leak-free accuracy", "training minutes")
    body = []
    for row in _configuration_rows(configurations):
        body.append([row["group"].split()[0], row["label"], row["backbone"], row["protocol"], row["runs"],
                     row["seeds"],
                     *(_spread(row, name) for name in SEED_STATS)])
    return _table(header, body)


def _spread(row: dict, name: str) -> str:
    if row[f"{name}_mean"] is None:
        return "n/a"
    digits = 1 if name == TRAIN_MINUTES else 4
    mean, std, low, high = (row[f"{name}_{stat}"] for stat in ("mean", "std", "min", "max"))
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{low:.{digits}f} – {high:.{digits}f}]"


def published_results() -> dict:
    """The study's published figures by run label (VGG16-I ... InceptionV3-III)."""
    return json.loads(resources.files("braintumor.results").joinpath("study_results.json").read_text())["runs"]


def _study_layout(configurations: list[Configuration], name_group: bool, study: bool) -> str:
    """Rows: classes, macro / weighted average, accuracy, test loss, then our extras; columns: P R F1 per experiment."""
    means = [configuration.mean_metrics() for configuration in configurations]
    published = published_results() if study else {}
    papers = [published.get(configuration.label) for configuration in configurations]
    titles = [configuration.label + (f" ({configuration.group.split()[0]})" if name_group else "")
              for configuration in configurations]
    header = ["", *(f"{title} {stat}" for title in titles for stat in ("P", "R", "F1"))]
    blank = ["", ""]

    def triple(scores: dict | None) -> list[str]:
        return [_cell(scores[stat]) for stat in ("precision", "recall", "f1")] if scores else ["", "", ""]

    def lookup(figures: dict | None, name: str) -> dict | None:
        if figures is None:
            return None
        if name in ("macro_avg", "weighted_avg"):
            return figures.get(name)
        return {_class_key(cls): scores for cls, scores in figures["per_class"].items()}.get(_class_key(name))

    def single(figures: dict | None, name: str) -> list[str]:
        value = None if figures is None else figures.get(name)
        return [*blank, "" if value is None else _cell(value)]

    rows_spec = [(name, name, triple) for name in dict.fromkeys(c for m in means for c in m["per_class"])]
    rows_spec += [("macro avg", "macro_avg", triple), ("weighted avg", "weighted_avg", triple),
                  ("accuracy", "accuracy", None), ("test loss", "loss", None)]
    body = []
    for title, key, kind in rows_spec:
        if kind is triple:
            ours = [cell for m in means for cell in triple(lookup(m, key))]
            theirs = [cell for paper in papers for cell in triple(lookup(paper, key))]
        else:
            ours = [cell for m in means for cell in single(m, key)]
            theirs = [cell for paper in papers for cell in single(paper, key)]
        body.append([title, *ours])
        if any(theirs):
            body.append(["*study*", *theirs])
    body.append(["accuracy: 95% CI (one run) / ± std over seeds",
                 *(cell for c in configurations for cell in [*blank, _interval_or_spread(c)])])
    body.append(["leak-free accuracy", *(cell for c in configurations
                                         for cell in [*blank, _cell(_mean_or_none(c.values("leak_free")))])])
    body.append(["runs (seeds)", *(cell for c in configurations for cell in
                                   [*blank, f"{len(c.members)} ({c.seeds()})"])])
    return _table(header, body)


def _interval_or_spread(configuration: Configuration) -> str:
    if len(configuration.members) == 1:
        low, high = configuration.members[0].metrics["ci95"]["accuracy"]
        return f"[{low:.4f}, {high:.4f}]"
    return f"± {np.std(configuration.values('accuracy'), ddof=1):.4f}"


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _terminal_summary(
    groups: dict[str, list[Result]], summary: list[dict], not_compared: list[dict], metric: str,
    configurations: list[Configuration],
) -> str:
    parts = [f"ranked by {metric}"]
    for name in groups:
        parts += [name, _summary_markdown([row for row in summary if row["group"] == name])]
    if any(len(configuration.members) > 1 for configuration in configurations):
        parts += ["configurations over seeds (mean ± std [min – max])", _configurations_markdown(configurations)]
    if not_compared:
        parts += ["not compared (also in not_compared.csv):", *map(_not_compared_text, not_compared)]
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
