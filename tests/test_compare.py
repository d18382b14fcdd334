"""compare.py on run folders written with the real report writers."""

import csv
import json
import logging
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from braintumor.cli import main
from braintumor.core.atomic import write_json
from braintumor.core.errors import UserError
from braintumor.results import compare as compare_module
from braintumor.results.compare import compare_runs
from braintumor.results.metrics import METRICS
from braintumor.results.reports import write_evaluation

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def make_run(outputs: Path, folder: str, *, backbone: str = "vgg16", label: str | None = None,
             seed: int = 0, n: int = 60, split: str = "Testing", state: str = "completed",
             shuffled: bool = False) -> Path:
    """A run folder as `braintumor train` leaves it, with seeded random predictions."""
    run = outputs / folder
    run.mkdir(parents=True)
    config = {"name": run.name.split("-")[0], "label": label, "seed": seed,
              "model": {"backbone": backbone, "mode": "fine-tune"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_json(run / "status.json", {"state": state, "started": "2024-01-01T00:00:00",
                                     "finished": None, "error": None})
    if state == "completed":
        write_predictions(run, seed=seed, n=n, split=split, shuffled=shuffled)
    return run


def write_predictions(folder: Path, *, seed: int, n: int = 60, split: str = "Testing",
                      shuffled: bool = False) -> None:
    rng = np.random.default_rng(seed)
    y_true = np.arange(n) % 4  # file i always has the same class, whichever run scores it
    logits = rng.normal(size=(n, 4)) * 1.5
    logits[np.arange(n), y_true] += rng.uniform(0.5, 2.5)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    files = np.array([f"{split}/{CLASSES[t]}/image({i}).jpg" for i, t in enumerate(y_true)])
    order = rng.permutation(n) if shuffled else np.arange(n)
    write_evaluation(folder, files[order].tolist(), y_true[order], probs[order], CLASSES, seed=seed,
                     extra={"split": split})


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """Three VGG16 runs, two ResNet50 runs (one on another test set), a failed and a running run."""
    outputs = tmp_path_factory.mktemp("outputs")
    make_run(outputs, "vgg_features-20240101-000000", label="VGG16-I", seed=1)
    make_run(outputs, "vgg_full-20240101-000000", label="VGG16-II", seed=2, shuffled=True)
    make_run(outputs, "vgg_adam-20240101-000000", label="VGG16-III", seed=3)
    make_run(outputs, "resnet-20240101-000000", backbone="resnet50", seed=4)
    make_run(outputs, "nested/resnet_other-20240101-000000", backbone="resnet50", seed=5, n=48,
             split="Holdout")
    make_run(outputs, "broken-20240101-000000", state="failed")
    make_run(outputs, "busy-20240101-000000", state="running")
    out = compare_runs(outputs, out_dir=outputs.parent / "comparison")
    return outputs, out


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def recompute(folder: Path) -> dict:
    """Everything the tables report, from predictions.csv alone, with scikit-learn."""
    rows = read_csv(folder / "predictions.csv")
    truth, predicted = [r["true"] for r in rows], [r["predicted"] for r in rows]
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    one_hot = np.array([[t == c for c in CLASSES] for t in truth])
    scores = {"n": len(rows), "accuracy": accuracy_score(truth, predicted),
              "loss": log_loss(truth, probs, labels=CLASSES),
              "balanced_accuracy": balanced_accuracy_score(truth, predicted),
              "cohen_kappa": cohen_kappa_score(truth, predicted),
              "roc_auc_macro": roc_auc_score(one_hot, probs, average="macro"),
              "ece": ece_by_hand(truth, predicted, probs.max(axis=1))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=CLASSES,
                                                     average=average, zero_division=0)
        scores |= {f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f}
    p, r, f, s = precision_recall_fscore_support(truth, predicted, labels=CLASSES, zero_division=0)
    scores["per_class"] = {c: {"precision": p[k], "recall": r[k], "f1": f[k], "support": s[k],
                               "roc_auc": roc_auc_score(one_hot[:, k], probs[:, k])}
                           for k, c in enumerate(CLASSES)}
    scores["correct"] = {row["file"]: row["true"] == row["predicted"] for row in rows}
    return scores


def ece_by_hand(truth: list[str], predicted: list[str], confidence: np.ndarray) -> float:
    gap = 0.0
    for low in np.arange(15) / 15:
        members = [i for i, c in enumerate(confidence) if low <= c < low + 1 / 15]
        hits = sum(truth[i] == predicted[i] for i in members)
        gap += abs(hits - sum(confidence[i] for i in members))
    return gap / len(truth)


def test_every_table_number_equals_a_recomputation_from_predictions(study):
    outputs, out = study
    summary = read_csv(out / "summary.csv")
    assert len(summary) == 5
    for row in summary:
        folder = outputs / row["folder"]
        expected = recompute(folder)
        stored_ci = json.loads((folder / "metrics.json").read_text())["ci95"]
        assert int(row["n"]) == expected["n"]
        for column in ("accuracy", "loss", "balanced_accuracy", "cohen_kappa", "roc_auc_macro",
                       "ece", "macro_precision", "macro_recall", "macro_f1",
                       "weighted_precision", "weighted_recall", "weighted_f1"):
            assert float(row[column]) == pytest.approx(expected[column], rel=1e-9), column
        assert [float(row["accuracy_ci_low"]), float(row["accuracy_ci_high"])] == (
            stored_ci["accuracy"])
        assert [float(row["macro_f1_ci_low"]), float(row["macro_f1_ci_high"])] == (
            stored_ci["macro_f1"])

    per_class = read_csv(out / "per_class.csv")
    assert len(per_class) == 5 * len(CLASSES)
    folders = {row["label"]: outputs / row["folder"] for row in summary}
    for row in per_class:
        expected = recompute(folders[row["label"]])["per_class"][row["class"]]
        for column in ("precision", "recall", "f1", "support", "roc_auc"):
            assert float(row[column]) == pytest.approx(expected[column], rel=1e-12), column

    mcnemar_rows = read_csv(out / "mcnemar.csv")
    assert len(mcnemar_rows) == 3  # the best run of G1 against its three others; G2 has one run
    for row in mcnemar_rows:
        best, other = recompute(folders[row["best"]]), recompute(folders[row["other"]])
        assert best["correct"].keys() == other["correct"].keys()
        b = sum(best["correct"][f] and not other["correct"][f] for f in best["correct"])
        c = sum(other["correct"][f] and not best["correct"][f] for f in best["correct"])
        assert (int(row["only_best_correct"]), int(row["only_other_correct"])) == (b, c)
        expected_p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        assert float(row["p_value"]) == pytest.approx(expected_p, rel=1e-9)
        assert float(row["best_accuracy"]) == pytest.approx(best["accuracy"], rel=1e-12)
        assert float(row["other_accuracy"]) == pytest.approx(other["accuracy"], rel=1e-12)


def test_runs_on_different_test_files_are_grouped_and_ranked_apart(study):
    outputs, out = study
    summary = read_csv(out / "summary.csv")
    groups = {row["group"] for row in summary}
    assert groups == {"G1 (60 images under Testing)", "G2 (48 images under Holdout)"}
    for group in groups:
        rows = [row for row in summary if row["group"] == group]
        accuracies = [float(row["accuracy"]) for row in rows]
        assert accuracies == sorted(accuracies, reverse=True)
        assert rows[0]["rank"] == "1" and rows[0]["best"] == "yes"
    holdout = [row for row in summary if row["group"].startswith("G2")]
    assert [row["folder"] for row in holdout] == ["nested/resnet_other-20240101-000000"]
    assert all(row["group"].startswith("G1") for row in read_csv(out / "mcnemar.csv"))
    # the shuffled run wrote the same files in another order: same group, aligned by file
    assert "VGG16-II" in {row["label"] for row in summary if row["group"].startswith("G1")}


def test_report_lists_unfinished_runs_and_has_all_sections(study, capsys):
    outputs, out = study
    assert sorted(path.name for path in out.iterdir()) == [
        "comparison.md", "comparison.png", "configurations.csv", "mcnemar.csv", "not_compared.csv", "per_class.csv",
        "summary.csv"]
    report = (out / "comparison.md").read_text()
    for heading in ("## Summary", "## McNemar", "### vgg16", "### resnet50", "## Not compared"):
        assert heading in report
    for name, state in (("broken", "failed"), ("busy", "running")):
        assert (f"| {name}-20240101-000000 | {name} | {state} | training did not complete (status: {state}) | "
                f"continue it with braintumor train --resume {outputs / name}-20240101-000000") in report
    assert [row["folder"] for row in read_csv(out / "not_compared.csv")] == [
        "broken-20240101-000000", "busy-20240101-000000"]
    assert "VGG16-I P | VGG16-I R | VGG16-I F1" in report
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    summary_labels = {row["label"] for row in read_csv(out / "summary.csv")}
    assert summary_labels == {"VGG16-I", "VGG16-II", "VGG16-III", "resnet", "resnet_other"}


def test_terminal_summary_labels_eval_results_and_ranks_by_loss(tmp_path, caplog):
    first = make_run(tmp_path, "a-20240101-000000", label="same", seed=1)
    make_run(tmp_path, "b-20240101-000000", label="same", seed=2)
    evaluation = first / "eval" / "Testing-20240102-000000"
    evaluation.mkdir(parents=True)
    write_predictions(evaluation, seed=3)

    caplog.set_level(logging.INFO, logger="braintumor")
    out = compare_runs(tmp_path, metric="loss", out_dir=tmp_path / "plain")
    printed = caplog.text
    assert "ranked by loss" in printed and "same (a-20240101-000000)" in printed
    assert str(out) in printed
    assert len(read_csv(out / "summary.csv")) == 2

    out = compare_runs(tmp_path, metric="loss", out_dir=tmp_path / "with-eval", include_eval=True)
    summary = read_csv(out / "summary.csv")
    losses = [float(row["loss"]) for row in summary]
    assert losses == sorted(losses)
    assert "same eval/Testing-20240102-000000" in {row["label"] for row in summary}


def test_default_output_folder_is_timestamped_inside_outputs(tmp_path):
    make_run(tmp_path, "a-20240101-000000", seed=1)
    out = compare_runs(tmp_path)
    assert out.parent == tmp_path and out.name.startswith("comparison-")
    assert (out / "summary.csv").is_file()
    with pytest.raises(UserError, match="already exists"):
        compare_runs(tmp_path, out_dir=out)


def corrupt_metrics(outputs: Path) -> Path:
    path = make_run(outputs, "a-20240101-000000") / "metrics.json"
    path.write_text('{"n": 60, "accuracy": ')
    return path


def stale_metrics(outputs: Path) -> Path:
    path = make_run(outputs, "a-20240101-000000") / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "accuracy": 0.123}))
    return path


def corrupt_predictions(outputs: Path) -> Path:
    path = make_run(outputs, "a-20240101-000000") / "predictions.csv"
    path.write_text(path.read_text().replace("0.", "O.", 3))
    return path


def no_runs(outputs: Path) -> Path:
    (outputs / "notes.txt").write_text("no runs here")
    return outputs


def only_failed_runs(outputs: Path) -> Path:
    make_run(outputs, "a-20240101-000000", state="failed")
    return outputs


@pytest.mark.parametrize("make_bad_input, message", [
    (lambda outputs: outputs / "missing", "no such folder"),
    (no_runs, "no runs found"),
    (only_failed_runs, "none of the 1 run or evaluation folders found can be compared"),
    (corrupt_metrics, "is corrupt"),
    (stale_metrics, "disagrees with the predictions.csv"),
    (corrupt_predictions, "corrupt predictions file"),
])
def test_bad_input_names_the_file_and_leaves_nothing_behind(tmp_path, make_bad_input, message):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    named = make_bad_input(outputs)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError, match=message) as error:
        compare_runs(outputs if named.name != "missing" else named, out_dir=tmp_path / "cmp")
    assert str(named) in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_exits_2_with_one_line_naming_the_file(tmp_path, capsys):
    path = corrupt_predictions(tmp_path)
    assert main(["compare", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(path) in error
    assert not any(p.name.startswith("comparison") for p in tmp_path.iterdir())


def test_unknown_metric_names_the_allowed_ones(tmp_path, capsys):
    make_run(tmp_path, "a-20240101-000000")
    assert main(["compare", str(tmp_path), "--metric", "f2"]) == 2
    assert "unknown metric 'f2'; use one of: accuracy, macro_precision, macro_recall, macro_f1" in (
        capsys.readouterr().err)


def test_labels_from_users_cannot_run_as_formulas_or_break_markdown_tables(tmp_path):
    hostile = "=HYPERLINK(\"http://x\")|pwn"
    make_run(tmp_path, "a-20240101-000000", label=hostile, seed=1)
    make_run(tmp_path, "b-20240101-000000", label="-1+1", seed=2)
    out = compare_runs(tmp_path, out_dir=tmp_path / "cmp")
    with (out / "summary.csv").open(newline="") as handle:
        labels = {row["label"] for row in csv.DictReader(handle)}
    assert labels == {"'" + hostile, "'-1+1"}  # a spreadsheet shows them as text
    tables = re.findall(r"(?:^\| .*\n)+", (out / "comparison.md").read_text(), flags=re.MULTILINE)
    assert sum("HYPERLINK" in table for table in tables) >= 2  # the summary and the McNemar table
    for table in tables:  # every row of a table has as many cells as its header
        assert len({len(re.split(r"(?<!\\)\|", line)) for line in table.splitlines()}) == 1, table


def add_leak_free(run: Path, accuracy: float, train_seconds: float = 600.0) -> None:
    """What training stores: the leak-free subset's metrics under `leak_free` in metrics.json, the training time and
    the calibration's figures."""
    path = run / "metrics.json"
    write_json(path, {**json.loads(path.read_text()), "leak_free": {"accuracy": accuracy, "n": 40, "excluded": 20},
                      "train_seconds": train_seconds, "calibration": {"temperature": 1.5, "ece_after": accuracy / 10}})


def test_runs_differing_only_in_seed_are_pooled_into_one_configuration(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="braintumor")
    seeds = {}
    for seed, leak_free in ((0, 0.5), (1, 0.6), (2, 0.7)):
        run = make_run(tmp_path, f"vgg16_full-s{seed}-20240101-000000", label="VGG16-I", seed=seed)
        add_leak_free(run, leak_free, train_seconds=600.0 + 60 * seed)
        seeds[seed] = run
    make_run(tmp_path, "vgg16_adam-s0-20240101-000000", label="VGG16-II", seed=5)
    out = compare_runs(tmp_path, out_dir=tmp_path / "cmp", metric="leak_free", study=True)

    summary = {row["folder"]: row for row in read_csv(out / "summary.csv")}
    assert len(summary) == 4  # McNemar and bootstrap stay per run
    assert len(read_csv(out / "mcnemar.csv")) == 3
    rows = {row["label"]: row for row in read_csv(out / "configurations.csv")}
    assert set(rows) == {"VGG16-I", "VGG16-II"}
    pooled = rows["VGG16-I"]
    assert (pooled["runs"], pooled["seeds"]) == ("3", "0 1 2")
    accuracies = [recompute(run)["accuracy"] for run in seeds.values()]
    glioma = [recompute(run)["per_class"]["glioma_tumor"]["recall"] for run in seeds.values()]
    for name, values in (("accuracy", accuracies), ("glioma_recall", glioma), ("leak_free", [0.5, 0.6, 0.7]),
                         ("train_minutes", [10.0, 11.0, 12.0])):
        assert float(pooled[f"{name}_mean"]) == pytest.approx(np.mean(values), rel=1e-12)
        assert float(pooled[f"{name}_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        assert (float(pooled[f"{name}_min"]), float(pooled[f"{name}_max"])) == (min(values), max(values))
    assert rows["VGG16-II"]["runs"] == "1" and rows["VGG16-II"]["accuracy_std"] == ""
    assert rows["VGG16-II"]["train_minutes_mean"] == ""  # a run without a stored training time
    assert float(summary["vgg16_full-s2-20240101-000000"]["leak_free"]) == 0.7
    # ranked by leak-free accuracy; the run without it comes last
    assert [row["leak_free"] for row in read_csv(out / "summary.csv")] == ["0.7", "0.6", "0.5", ""]

    report = (out / "comparison.md").read_text()
    assert "## Configurations over seeds" in report
    mean_accuracy = f"{np.mean(accuracies):.4f} ± {np.std(accuracies, ddof=1):.4f}"
    assert mean_accuracy in report and mean_accuracy in caplog.text
    assert "11.0 ± 1.0 [10.0 – 12.0]" in report  # training minutes


def test_configs_changed_by_set_are_told_apart_and_a_key_added_later_pools_at_its_default(tmp_path):
    """One config trained with and without `--set model.norm=batch` (one label, two configurations), over two seeds;
    the seed-0 IBN run was recorded before `model.mixstyle` existed, the seed-1 one states its default."""
    for norm in ("ibn", "batch"):
        for seed in (0, 1):
            run = make_run(tmp_path, f"scratch-{norm}-s{seed}", label="scratch", seed=seed, backbone="simple_cnn")
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["model"].update(mode="full", weights="none", norm=norm, **({"mixstyle": 0.0} if seed else {}))
            (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = compare_runs(tmp_path, out_dir=tmp_path / "cmp")
    rows = {row["label"]: (row["runs"], row["seeds"]) for row in read_csv(out / "configurations.csv")}
    assert rows == {"scratch [model.norm=ibn]": ("2", "0 1"), "scratch [model.norm=batch]": ("2", "0 1")}


def test_study_layout_puts_experiments_side_by_side_with_the_published_figures(tmp_path):
    for label in ("VGG16-III", "VGG16-I", "VGG16-II"):
        make_run(tmp_path, f"{label}-20240101-000000", label=label, seed=len(label))
    plain = (compare_runs(tmp_path, out_dir=tmp_path / "plain") / "comparison.md").read_text()
    report = (compare_runs(tmp_path, out_dir=tmp_path / "study", study=True) / "comparison.md").read_text()
    table = report.split("### vgg16")[1].split("\n\n")[1].splitlines()
    assert table[0] == ("|  | VGG16-I P | VGG16-I R | VGG16-I F1 | VGG16-II P | VGG16-II R | VGG16-II F1 "
                        "| VGG16-III P | VGG16-III R | VGG16-III F1 |")
    titles = [line.split("|")[1].strip() for line in table[2:]]
    assert titles[:2] == ["glioma_tumor", "*study*"]
    assert titles[8:] == ["macro avg", "*study*", "weighted avg", "*study*", "accuracy", "*study*", "test loss",
                          "*study*", "accuracy: 95% CI (one run) / ± std over seeds", "leak-free accuracy",
                          "runs (seeds)"]
    # the published VGG16 figures of results.md: glioma P / R / F1 for I, II, III
    assert table[3] == ("| *study* | 0.7500 | 0.2100 | 0.3300 | 0.8800 | 0.2300 | 0.3700 | 0.9400 | 0.3100 "
                        "| 0.4700 |")
    assert "| *study* |  |  |  |  |  |  |  |  | 3.3900 |" in table  # test loss: published for VGG16-III only
    assert "*study*" not in plain


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(json.dumps(data))


DAMAGES = {  # folder name: (how the copy is damaged, the problem compare names, the action it proposes)
    "bootstrap-bomb": (lambda run: edit_json(run / "metrics.json", ci95__resamples=10**9),
                       "1000000000 bootstrap resamples asked for, outside 1 to 10000", "train its config again"),
    "metrics-not-utf8": (lambda run: (run / "metrics.json").write_bytes(b"\xff\xfe{"), "metrics.json is corrupt",
                         "train its config again"),
    "metrics-edited": (lambda run: edit_json(run / "metrics.json", accuracy=0.5), "disagrees with the predictions.csv",
                       "train its config again"),
    "predictions-corrupt": (lambda run: (run / "predictions.csv").write_text("file,true\nx.jpg,a\n"),
                            "corrupt predictions file", "train its config again"),
    "predictions-missing": (lambda run: (run / "predictions.csv").unlink(), "no predictions.csv",
                            "train its config again"),
    "status-garbage": (lambda run: (run / "status.json").write_text("[1, 2]"), "status.json is not a JSON object",
                       "train its config again"),
    "status-running": (lambda run: edit_json(run / "status.json", state="running"),
                       "training did not complete (status: running)", "braintumor train --resume"),
    "config-not-yaml": (lambda run: (run / "config.yaml").write_text("name: [unclosed\n"), "invalid YAML",
                        "remove the folder"),
}


def damaged_copies(trained_run: Path, outputs: Path, damages: dict) -> None:
    for name, (damage, _, _) in damages.items():
        damage(shutil.copytree(trained_run, outputs / name))


def test_damaged_runs_are_listed_with_the_reason_and_the_others_compared(trained_run, tmp_path, caplog):
    outputs = tmp_path / "outputs"
    for name in ("good-1", "good-2"):
        shutil.copytree(trained_run, outputs / name)
    damaged_copies(trained_run, outputs, DAMAGES)
    caplog.set_level(logging.INFO, logger="braintumor")
    peak = []
    tracemalloc.start()
    try:
        out = compare_runs(outputs, out_dir=tmp_path / "cmp")
        peak.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    assert peak[0] < 200 * 2**20  # the 10**9 resamples are never allocated

    assert [row["folder"] for row in read_csv(out / "summary.csv")] == ["good-1", "good-2"]
    left_out = {row["folder"]: row for row in read_csv(out / "not_compared.csv")}
    assert left_out.keys() == DAMAGES.keys()
    report = (out / "comparison.md").read_text()
    for name, (_, problem, action) in DAMAGES.items():
        row = left_out[name]
        assert problem in row["problem"] and action in row["action"], row
        assert "evaluate" not in row["problem"] + row["action"]  # evaluate never rewrites a run's own files
        assert f"{name}: {row['problem']}; {row['action']}" in caplog.text  # the console
        assert f"| {name} |" in report
    assert left_out["status-running"]["action"].startswith(f"continue it with braintumor train --resume {outputs}")


def test_every_run_unreadable_is_one_line_exit_2_and_writes_nothing(trained_run, tmp_path, capsys):
    damages = {name: DAMAGES[name] for name in ("bootstrap-bomb", "predictions-corrupt", "status-running")}
    damaged_copies(trained_run, tmp_path, damages)
    before = sorted(tmp_path.rglob("*"))
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: none of the 3 run or evaluation folders found can be compared: ")
    assert err.count("\n") == 1 and all(problem in err for _, problem, _ in damages.values())
    assert sorted(tmp_path.rglob("*")) == before


def test_a_damaged_evaluation_is_listed_beside_its_compared_run(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    evaluation = run / "eval" / "Testing-20240102-000000"
    evaluation.mkdir(parents=True)
    shutil.copy(run / "predictions.csv", evaluation)
    (evaluation / "metrics.json").write_text('{"n": 2')
    out = compare_runs(tmp_path, out_dir=tmp_path / "cmp", include_eval=True)
    assert [row["folder"] for row in read_csv(out / "summary.csv")] == ["run"]
    (row,) = read_csv(out / "not_compared.csv")
    assert row["folder"] == "run/eval/Testing-20240102-000000" and row["state"] == "evaluation"
    assert row["action"].startswith(f"evaluate the run again (braintumor evaluate --run {run} writes a new folder)")


def test_every_declared_metric_is_computed_reported_ranked_and_tabulated(tmp_path, capsys):
    """Adding a Metric to METRICS is all it takes: each consumer reads the declaration."""
    for seed, leak_free in ((1, 0.4), (2, 0.9)):
        add_leak_free(make_run(tmp_path, f"r{seed}-20240101-000000", seed=seed), leak_free)
    run = tmp_path / "r1-20240101-000000"
    stored = json.loads((run / "metrics.json").read_text())
    report = (run / "classification_report.txt").read_text()
    assert main(["compare", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    out = compare_runs(tmp_path, out_dir=tmp_path / "cmp")
    summary = read_csv(out / "summary.csv")
    heading = (out / "comparison.md").read_text().split("### G1")[1].split("\n")[2]
    for metric in METRICS:
        value = metric.value(stored)
        assert isinstance(value, float), metric.name  # computed and stored (leak_free: by evaluation)
        if metric.report_line:
            assert re.search(rf"^{re.escape(metric.title)} +{value:.4f}$", report, re.MULTILINE), metric.name
        elif metric.compute:
            assert f"{value:.4f}" in report, metric.name  # in sklearn's table
        assert metric.choice_help in help_text
        for row in summary:
            expected = metric.value(json.loads((tmp_path / row["folder"] / "metrics.json").read_text()))
            assert float(row[metric.name]) == pytest.approx(expected, rel=1e-12)
        assert f" {metric.label} " in heading or f" {metric.label} [95% CI] " in heading
    results = compare_module._collect(tmp_path, include_eval=False)[0]
    for metric in METRICS:  # ranked by each metric in its own direction (loss and ECE: lower is better)
        (ranked,) = compare_module._group_and_rank(results, metric.name).values()
        values = [metric.value(result.metrics) for result in ranked]
        assert values == sorted(values, reverse=metric.higher_is_better) and values[0] != values[1], metric.name
