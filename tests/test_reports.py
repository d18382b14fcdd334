"""reports.py: the files of the run-directory contract and reading them back."""

import csv
import json
import os

import numpy as np
import pytest

from braintumor.core.errors import UserError
from braintumor.results.metrics import compute_metrics
from braintumor.results.reports import plot_curves, read_predictions, write_evaluation

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
PNG_MAGIC = b"\x89PNG"


def float32_predictions(n: int = 40) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = np.arange(n) % 4
    probs = rng.dirichlet(np.ones(4), n).astype(np.float32)  # a model's output is float32
    files = [f"Testing/{CLASSES[t]}/image({i}).jpg" for i, t in enumerate(y_true)]
    return files, y_true, probs


def test_evaluation_files_reproduce_the_metrics_exactly(tmp_path):
    files, y_true, probs = float32_predictions()
    tta = compute_metrics(y_true, probs[:, ::-1], CLASSES, seed=5)
    leak_free = {"excluded": 10, **compute_metrics(y_true[10:], probs[10:], CLASSES, seed=5)}
    returned = write_evaluation(tmp_path, files, y_true, probs, CLASSES, seed=5,
                                extra={"split": "Testing", "tta": tta, "leak_free": leak_free})
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored == returned
    assert stored["split"] == "Testing" and stored["tta"] == tta
    read_files, read_true, read_probs, read_classes = read_predictions(tmp_path / "predictions.csv")
    assert (read_files, read_classes) == (files, CLASSES)
    assert np.array_equal(read_true, y_true)
    assert np.array_equal(read_probs, probs.astype(np.float64))
    recomputed = compute_metrics(read_true, read_probs, read_classes, seed=5)
    assert recomputed == {k: v for k, v in stored.items() if k not in ("split", "tta", "leak_free")}
    report = (tmp_path / "classification_report.txt").read_text()
    assert "meningioma_tumor" in report and "balanced accuracy" in report
    assert f"{stored['accuracy']:.4f}" in report
    # TTA and the leak-free subset appear as text too, not only in metrics.json
    flipped, subset = report.split("\nWith horizontal-flip")[1].split("\nLeak-free subset")
    assert "its mirror (40 images)" in flipped and f"accuracy              {tta['accuracy']:.4f}" in flipped
    assert "(30 images; 10 test images with a Training twin left out)" in subset
    assert f"accuracy              {leak_free['accuracy']:.4f}" in subset
    glioma = leak_free["per_class"]["glioma_tumor"]
    assert f"glioma_tumor  {glioma['precision']:9.4f} {glioma['recall']:9.4f} {glioma['f1']:9.4f}" in subset
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("corrupt", [
    lambda text: "",
    lambda text: text.replace("p_no_tumor", "no_tumor"),
    lambda text: text.rsplit("\n", 3)[0] + "\nTesting/x.jpg,glioma_tumor\n",
    lambda text: text.replace("0.", "zero.", 1),
    lambda text: text.replace(",pituitary_tumor,", ",unknown_tumor,", 1),
    lambda text: text + text.splitlines()[1] + "\n",  # the same file twice
])
def test_corrupt_predictions_name_the_file(tmp_path, corrupt):
    files, y_true, probs = float32_predictions()
    write_evaluation(tmp_path, files, y_true, probs, CLASSES)
    path = tmp_path / "predictions.csv"
    path.write_text(corrupt(path.read_text()))
    with pytest.raises(UserError, match="predictions.csv: corrupt predictions file"):
        read_predictions(path)


def test_predicted_column_must_be_the_most_probable_class(tmp_path):
    files, y_true, probs = float32_predictions()
    write_evaluation(tmp_path, files, y_true, probs, CLASSES)
    path = tmp_path / "predictions.csv"
    header, first, *rest = path.read_text().splitlines()
    cells = first.split(",")
    cells[2] = next(name for name in CLASSES if name != cells[2])
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    with pytest.raises(UserError, match="most probable"):
        read_predictions(path)


def test_plot_curves_writes_a_png(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,accuracy,val_loss,val_accuracy\n"
                       "1,1.2,0.4,1.3,0.35\n2,0.9,0.6,1.0,0.55\n")
    plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_hostile_names_are_escaped_in_the_csv_and_read_back_exactly(tmp_path):
    classes = ["=cmd|' /C calc'!A0", "+sum", "@import", "plain|piped"]
    files = ["-2+3.jpg", "\tindent.jpg", "'quoted.jpg", "Testing/ok.jpg"]
    y_true = np.arange(4)
    probs = np.eye(4) * 0.7 + 0.075
    write_evaluation(tmp_path, files, y_true, probs, classes)
    with (tmp_path / "predictions.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    cells = [cell for row in rows[1:] for cell in row[:3]]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert rows[1][0] == "'-2+3.jpg" and rows[1][1] == "'=cmd|' /C calc'!A0"
    read_files, read_true, read_probs, read_classes = read_predictions(tmp_path / "predictions.csv")
    assert read_files == files and read_classes == classes
    assert (read_true == y_true).all() and np.array_equal(read_probs, probs)


def test_file_names_that_are_not_utf8_round_trip_through_predictions(tmp_path):
    files = [os.fsdecode(b"Testing/a/scan\xff.jpg"), "Testing/b/ok.jpg", "Testing/c/x.jpg", "Testing/d/y.jpg"]
    write_evaluation(tmp_path, files, np.arange(4), np.eye(4) * 0.7 + 0.075, CLASSES)
    assert b"scan\xff.jpg" in (tmp_path / "predictions.csv").read_bytes()  # the file's own bytes
    assert read_predictions(tmp_path / "predictions.csv")[0] == files
