"""Calibrated probabilities (temperature scaling) and the out-of-distribution detector: fitted at the end of
training and by `braintumor calibrate`, stored checksummed in the run folder, applied by predict and evaluate."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sklearn.datasets import load_sample_images
from sklearn.metrics import roc_auc_score

from braintumor.cli import main
from braintumor.core.run import CALIBRATION, Run
from braintumor.data.decode import decode_image
from braintumor.engine.scoring import load_scorer
from braintumor.results import calibration
from braintumor.results.calibration import Calibration
from braintumor.results.metrics import expected_calibration_error


def _predict_json(capsys, *args: str) -> list[dict]:
    assert main(["predict", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def far_images(tmp_path_factory):
    """Images unlike brain MRI slices: scikit-learn's two sample photographs, noise, blank and text pages."""
    folder = tmp_path_factory.mktemp("far")
    rng = np.random.default_rng(0)
    for k, photo in enumerate(load_sample_images().images):
        Image.fromarray(photo).save(folder / f"photo{k}.jpg")
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / f"noise{k}.png")
        Image.new("RGB", (96, 96), (255 * k // 2,) * 3).save(folder / f"blank{k}.png")
        page = Image.new("RGB", (200, 200), "white")
        draw = ImageDraw.Draw(page)
        for line in range(12):
            draw.text((5, 5 + 16 * line), f"line {line} of page {k}: the quick brown fox", fill="black")
        page.save(folder / f"text{k}.png")
    return folder


@pytest.fixture
def old_run(trained_run, tmp_path):
    """A copy of the shared run as runs were before calibration existed: no calibration files, no blocks."""
    copy = Run(shutil.copytree(trained_run, tmp_path / trained_run.name))
    copy.calibration.unlink()
    copy.calibration_summary.unlink()
    metrics = copy.read_metrics()
    copy.metrics.write_text(json.dumps({k: v for k, v in metrics.items() if k not in ("calibration", "ood")}))
    return copy


def test_temperature_undoes_induced_overconfidence_and_never_changes_the_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2000, 4))
    labels = np.array([rng.choice(4, p=p) for p in calibration.softmax(logits)])  # calibrated at T = 1
    overconfident = 3 * logits  # the true temperature is 3
    temperature = calibration.fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3, rel=0.1)
    before, after = calibration.softmax(overconfident), calibration.softmax(overconfident, temperature)
    assert (before.argmax(axis=1) == after.argmax(axis=1)).all()
    assert expected_calibration_error(labels, after) < expected_calibration_error(labels, before) / 3
    # separable data: the NLL falls toward T = 0, and the search stops at the bound
    assert calibration.fit_temperature(np.eye(4)[labels] * 5, labels) == pytest.approx(0.05, rel=1e-3)


def test_training_writes_a_checksummed_calibration_and_metrics_report_it(trained_run):
    run = Run(trained_run)
    summary = json.loads(run.calibration_summary.read_text())
    assert run.calibration.name == CALIBRATION and len(summary["sha256"]) == 64
    assert summary["ood"]["validation_passed"] >= 0.95
    fitted = summary["temperature_fitted_on"]
    assert fitted["nll_after"] <= fitted["nll_before"] + 1e-12  # T = 1 is among the candidates
    metrics = run.read_metrics()
    cal = metrics["calibration"]
    assert set(cal) == {"temperature", "ece_before", "ece_after", "nll_before", "nll_after"}
    assert cal["temperature"] == summary["temperature"]
    assert cal["ece_after"] == pytest.approx(metrics["ece"]) and cal["nll_after"] == pytest.approx(metrics["loss"])
    assert set(metrics["ood"]["per_class"]) == set(metrics["classes"])
    assert "Flagged as unlike the training data" in run.classification_report.read_text()
    with run.predictions.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header[-2:] == ["in_distribution", "ood_score"] and {row[-2] for row in rows} <= {"true", "false"}


def test_logits_from_the_features_give_the_models_own_probabilities(trained_run, synth_root):
    from braintumor.data.decode import decode_image
    from braintumor.engine.scoring import Scorer
    from braintumor.models.saved import load_run_model

    model = load_run_model(Run(trained_run))
    images = np.stack([decode_image(f, 32, []) for f in sorted((synth_root / "Testing").glob("*/*.jpg"))])
    uncalibrated = Scorer(model, None)(images)
    assert uncalibrated.in_distribution is None
    assert np.abs(uncalibrated.probabilities - model.predict(images.astype(np.float32), verbose=0)).max() < 1e-6


def test_scores_do_not_depend_on_the_dtype_policy_the_process_was_left_in(trained_run, synth_root):
    """A bfloat16 run trained earlier in the same process (a sweep, a test session) once left its policy behind,
    and the detector's pooling then ran in bfloat16: evaluate flagged other images than training had."""
    import keras

    images = np.stack([decode_image(f, 32, []) for f in sorted((synth_root / "Testing").glob("*/*.jpg"))])
    before = load_scorer(Run(trained_run))(images)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        after = load_scorer(Run(trained_run))(images)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert np.array_equal(before.ood_scores, after.ood_scores)
    assert np.array_equal(before.probabilities, after.probabilities)


def test_training_leaves_the_process_dtype_policy_as_it_found_it(write_config):
    import keras

    from braintumor.core.config import load_config
    from braintumor.engine.train import run

    run(load_config(write_config(train={"epochs": 1, "batch_size": 8, "precision": "mixed_bfloat16"})))
    assert keras.mixed_precision.dtype_policy().name == "float32"


def test_ece_falls_on_the_validation_images_the_temperature_was_fitted_on(trained_run):
    from braintumor.engine.scoring import load_scorer

    run = Run(trained_run)
    scorer = load_scorer(run)
    cfg = run.read_config()
    from braintumor.data.dataset import load_dataset

    data = load_dataset(cfg, run.classes())
    scores = scorer(data.val.images)
    before = calibration.softmax(scores.logits)
    assert (scores.probabilities.argmax(axis=1) == before.argmax(axis=1)).all()
    assert (calibration.nll(scores.logits, data.val.labels, scorer.calibration.temperature)
            <= calibration.nll(scores.logits, data.val.labels) + 1e-12)
    assert scores.in_distribution.mean() >= 0.95  # the threshold lets 95 % of the validation images pass
    assert np.isfinite(scores.ood_scores).all()


def test_far_images_score_higher_than_testing_images(trained_run, synth_root, far_images, capsys):
    far = _predict_json(capsys, "--run", str(trained_run), str(far_images))
    near = _predict_json(capsys, "--run", str(trained_run), str(synth_root / "Testing"))
    assert all(isinstance(r["in_distribution"], bool) and np.isfinite(r["ood_score"]) for r in far + near)
    scores = [r["ood_score"] for r in near + far]
    auroc = roc_auc_score([0] * len(near) + [1] * len(far), scores)
    flagged = np.mean([not r["in_distribution"] for r in far])
    with capsys.disabled():
        print(f"tiny run: AUROC far vs synthetic Testing {auroc:.3f}; far flagged {flagged:.0%}; Testing flagged "
              f"{np.mean([not r['in_distribution'] for r in near]):.0%}")
    assert auroc > 0.9  # measured 1.000 on the 2-epoch, 32 px shared run
    # the text output marks exactly the flagged lines
    assert main(["predict", "--run", str(trained_run), str(far_images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = {line.split()[0] for line in lines if line.endswith("[not like the training data]")}
    assert marked == {r["file"] for r in far if not r["in_distribution"]}


def test_calibrate_an_old_run_writes_the_files_and_predict_works_before_it(old_run, synth_root, tmp_path, capsys):
    image = str(synth_root / "Testing" / "glioma_tumor" / "synth_0000.jpg")
    (before,) = _predict_json(capsys, "--run", str(old_run.path), image)
    assert before["in_distribution"] is None and before["ood_score"] is None
    assert main(["predict", "--run", str(old_run.path), image, "--csv", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert err.count(f"braintumor calibrate --run {old_run.path}") == 1
    best_epoch = old_run.read_metrics()["best_epoch"]
    assert main(["calibrate", "--run", str(old_run.path)]) == 0
    capsys.readouterr()
    assert old_run.calibration.is_file() and old_run.calibration_summary.is_file()
    metrics = old_run.read_metrics()
    assert set(metrics["calibration"]) >= {"ece_before", "ece_after"} and "ood" in metrics  # its reports again
    assert metrics["best_epoch"] == best_epoch is not None  # what training recorded is kept
    with open(old_run.predictions, newline="") as handle:
        assert all(row["in_distribution"] in ("true", "false") for row in csv.DictReader(handle))
    (after,) = _predict_json(capsys, "--run", str(old_run.path), image)
    assert isinstance(after["in_distribution"], bool)
    assert after["predicted"] == before["predicted"]
    assert max(after["probabilities"].values()) != pytest.approx(max(before["probabilities"].values()), abs=1e-9)


def test_a_damaged_calibration_is_one_line_naming_the_fix(old_run, trained_run, synth_root, capsys):
    shutil.copy(Run(trained_run).calibration, old_run.calibration)
    data = bytearray(old_run.calibration.read_bytes())
    data[len(data) // 2] ^= 0xFF
    old_run.calibration.write_bytes(bytes(data))
    shutil.copy(Run(trained_run).calibration_summary, old_run.calibration_summary)
    image = str(synth_root / "Testing" / "glioma_tumor" / "synth_0000.jpg")
    for command in (["predict", "--run", str(old_run.path), image], ["evaluate", "--run", str(old_run.path)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "damaged" in err[0] and err[0].endswith(f"braintumor calibrate --run {old_run.path}")


def test_a_calibration_from_before_the_stages_reads_the_penultimate_features_alone(old_run, trained_run, synth_root,
                                                                                  capsys):
    """calibration.npz as written before the detector read the backbone's stages (one feature layer: `means`,
    `precision`, two-part centre and scale) still scores; one whose layers do not fit the model is one line."""
    cal = load_scorer(Run(trained_run)).calibration
    legacy = {"temperature": np.float64(cal.temperature), "means": cal.means[-1], "precision": cal.precision[-1],
              "centre": cal.centre[-2:], "scale": cal.scale[-2:], "threshold": np.float64(cal.threshold)}
    old_run.write_calibration(legacy, {"ood": {}})
    images = sorted((synth_root / "Testing").rglob("*.jpg"))[:4]
    rows = _predict_json(capsys, "--run", str(old_run.path), *map(str, images))
    scorer = load_scorer(old_run)
    assert len(scorer.calibration.means) == 1 and scorer.calibration.means[0].shape[1] == scorer.feature_sizes[-1]
    config = old_run.read_config()
    features, logits = scorer.features_and_logits(
        np.stack([decode_image(f, config.data.image_size, config.data.preprocess) for f in images]))
    expected = Calibration.from_arrays(legacy).ood_scores(features[-1:], logits)
    assert np.allclose([r["ood_score"] for r in rows], expected)

    old_run.write_calibration({**cal.arrays(), "means_0": cal.means[0][:, :3], "precision_0": np.eye(3)}, {"ood": {}})
    assert main(["predict", "--run", str(old_run.path), str(images[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fitted on features of another model" in err[0]
    assert err[0].endswith(f"braintumor calibrate --run {old_run.path}")
