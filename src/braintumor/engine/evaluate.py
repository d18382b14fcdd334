"""Evaluation: predictions of a saved model on a split, written as the run-directory reports.

Training's final report and `braintumor evaluate` share `_evaluate_split`, and both predict from
the saved model.keras and its calibration with the same batch size, so re-evaluating a run's Testing
split reproduces its training-time numbers exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from braintumor.core import logs, rundir
from braintumor.core.config import Config, DataConfig
from braintumor.core.errors import UserError
from braintumor.core.run import Evaluation, Reports, Run
from braintumor.data import splits
from braintumor.data.dataset import Dataset, Split, list_split, load_split
from braintumor.data.twins import find_test_twins
from braintumor.engine.calibrate import fit_calibration, run_dataset
from braintumor.engine.scoring import Scorer, load_scorer
from braintumor.models.saved import load_run_model
from braintumor.results import reports
from braintumor.results.calibration import calibration_report, flagged_report
from braintumor.results.metrics import compute_metrics

log = logs.get_logger(__name__)

# what a run's own metrics.json records beside the metrics, kept when its reports are written again
RECORDED_BY_TRAINING = ("best_epoch", "train_seconds", "adapted_from")


def _leak_free(split: Split, probs: np.ndarray, classes: list[str], seed: int, cfg: DataConfig) -> dict:
    """Metrics on the images of `split` that have no exact or near duplicate in the Training folder."""
    root = Path(cfg.root).expanduser()
    training, _, _ = list_split(cfg, cfg.train_dir, classes)
    twins = find_test_twins([root / f for f in training], [root / f for f in split.files],
                            cache_dir=Path(cfg.cache_dir).expanduser())
    twin_files = {p.relative_to(root).as_posix() for p in twins}
    keep = np.array([f not in twin_files for f in split.files])
    return {"excluded": len(twin_files), "excluded_files": sorted(twin_files),
            **compute_metrics(split.labels[keep], probs[keep], classes, seed=seed)}


def _evaluate_split(scorers: list[Scorer], split: Split, classes: list[str], out_dir: Path, seed: int,
                    extra: dict, data_cfg: DataConfig, tta: bool = False, leak_free: bool = False) -> dict:
    """Reports of one model, or of the mean probabilities of several (an ensemble), on `split`; one calibrated model
    adds ECE and NLL before and after its temperature, and the share of images flagged as unlike its training data."""

    def probabilities(images: np.ndarray) -> np.ndarray:
        return np.mean([scorer(images).probabilities for scorer in scorers], axis=0)

    in_distribution = ood_scores = None
    if len(scorers) == 1 and (cal := scorers[0].calibration) is not None:
        scores = scorers[0](split.images)
        probs, in_distribution, ood_scores = scores.probabilities, scores.in_distribution, scores.ood_scores
        extra = {**extra, "calibration": calibration_report(cal, scores.logits, split.labels),
                 "ood": flagged_report(cal, in_distribution, split.labels, classes)}
    else:
        probs = probabilities(split.images)
    if tta:
        flipped = probabilities(split.images[:, :, ::-1])
        extra = {**extra, "tta": compute_metrics(split.labels, (probs + flipped) / 2, classes, seed=seed)}
    if leak_free:
        extra = {**extra, "leak_free": _leak_free(split, probs, classes, seed, data_cfg)}
    folders = np.array([reports.published_folder(file) for file in split.files])
    if len(set(folders)) > 1:  # a grouped test part mixes the published folders, which come from other sources
        extra = {**extra, "by_folder": {folder: compute_metrics(split.labels[folders == folder],
                                                                probs[folders == folder], classes, seed=seed)
                                        for folder in sorted(set(folders))}}
    metrics = reports.write_evaluation(out_dir, split.files, split.labels, probs, classes, seed=seed, extra=extra,
                                       in_distribution=in_distribution, ood_scores=ood_scores)
    _print_summary(extra["split"], metrics, len(split.files))
    return metrics


def _print_summary(split: str, metrics: dict, n: int) -> None:
    log.info(f"{split}: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"macro F1 {metrics['macro_avg']['f1']:.4f} ({n} images)")
    for key, title in (("tta", "with flip TTA"), ("leak_free", "leak-free subset")):
        if key in metrics:
            part = metrics[key]
            log.info(f"{split} {title}: accuracy {part['accuracy']:.4f} ({part['n']} images"
                  + (f", {part['excluded']} with a Training twin left out)" if key == "leak_free" else ")"))
    for folder, part in metrics.get("by_folder", {}).items():
        log.info(f"{split}, the images from {folder}/: accuracy {part['accuracy']:.4f} ({part['n']} images)")
    if "calibration" in metrics:
        cal, ood = metrics["calibration"], metrics["ood"]
        per_class = ", ".join(f"{name} {part['flagged']:.0%}" for name, part in ood["per_class"].items()
                              if part["flagged"] is not None)
        log.info(f"{split}: temperature {cal['temperature']:.3f}, ECE {cal['ece_before']:.4f} → "
                 f"{cal['ece_after']:.4f}; flagged as unlike the training data: {ood['flagged']:.1%} ({per_class})")


def report_training_run(run: Run, cfg: Config, data: Dataset, best_epoch: int | None,
                        train_seconds: float, out: Reports) -> dict:
    """Calibration, test-part metrics (official protocol: also leak-free) and plots of a finished run, into `out`."""
    model = load_run_model(run)
    scorer = Scorer(model, fit_calibration(run, model, data))
    return report_run(run, cfg, data, scorer, {"best_epoch": best_epoch, "train_seconds": train_seconds}, out)


def calibrate_run(run: Run) -> None:
    """`braintumor calibrate`: fit the run's calibration from its data again, and write its own reports on its test
    part again with it (probabilities, the detector's verdicts in predictions.csv and metrics.json's calibration and
    ood), keeping what training recorded (best epoch, training time, an adapted run's source)."""
    data = run_dataset(run, "calibrate")
    model = load_run_model(run)
    scorer = Scorer(model, fit_calibration(run, model, data))
    kept = {key: value for key, value in run.read_metrics().items() if key in RECORDED_BY_TRAINING}
    staging = run.reports_staging()
    report_run(run, run.read_config(), data, scorer, kept, staging)
    run.adopt_reports(staging)
    log.info(f"wrote {run.calibration} and the reports of {run.path} again")


def report_run(run: Run, cfg: Config, data: Dataset, scorer: Scorer, about: dict, out: Reports) -> dict:
    """A run's own reports of `scorer` on its test part (official protocol: also leak-free), with `about` added to
    metrics.json, and the curves of its history.csv, written into `out`."""
    protocol = data.protocol["name"]
    about = {"split": "test" if protocol != "official" else cfg.data.test_dir, "protocol": protocol, **about}
    # the grouped protocols keep twins on one side, so their metrics are leak-free already
    metrics = _evaluate_split([scorer], data.test, data.classes, out.path, cfg.seed, about, cfg.data,
                              leak_free=protocol == "official")
    reports.plot_curves(run.history, out.curves)
    return metrics


def evaluate_run(run: Run, data_root: Path | None = None, split: str | None = None, out_dir: Path | None = None,
                 tta: bool = False, leak_free: bool = False) -> Path:
    """`braintumor evaluate`: metrics of a run's saved model on one split (by default its test part: Testing under
    the official protocol, split.csv's test part under a grouped one); returns the output folder."""
    cfg, classes, protocol = run.read_config(), run.classes(), run.protocol()
    split = split or default_split(protocol, cfg)
    if protocol != "official" and split in (cfg.data.train_dir, cfg.data.test_dir):
        raise UserError(f"this run trained under protocol {protocol}, on images of both {cfg.data.train_dir} and "
                        f"{cfg.data.test_dir}, so its {split} scores would count trained images; use --split test "
                        "(its own test part, from split.csv)")
    if leak_free and split in (cfg.data.train_dir, "validation"):
        raise UserError(f"--leak-free compares a split with {cfg.data.train_dir}, so it does not apply to {split}; "
                        f"use it with --split {cfg.data.test_dir} or another held-out folder")
    data_cfg = dataclasses.replace(cfg.data, root=str(data_root) if data_root else cfg.data.root,
                                   make_synthetic_if_missing=False)
    scorer = load_scorer(run)
    chosen = load_run_split(run, data_cfg, classes, split)
    dest = Evaluation(out_dir) if out_dir else run.new_evaluation(split)
    with rundir.staged_dir(dest.path) as tmp, logs.log_to_file(Evaluation(tmp).log):
        _evaluate_split([scorer], chosen, classes, tmp, cfg.seed,
                        {"split": split, "data_root": data_cfg.root, "run": str(run.path)}, data_cfg,
                        tta=tta, leak_free=leak_free)
    log.info(f"written to {dest.path}")
    return dest.path


def default_split(protocol: str, cfg: Config) -> str:
    """The images a run of `protocol` and `cfg` is scored on unless told otherwise: its test part, which under a
    grouped protocol is split.csv's (from both published folders) and under the official one the Testing folder."""
    return "test" if protocol != "official" else cfg.data.test_dir


def load_run_split(run: Run, data_cfg: DataConfig, classes: list[str], split: str) -> Split:
    """The decoded images of `split` for a run: a folder under the data root, or the run's own `validation` or
    `test` part, which a grouped protocol draws from both published folders."""
    if split not in ("validation", "test"):
        return load_split(data_cfg, split, classes)[0]
    both = load_split(data_cfg, data_cfg.train_dir, classes)[0] + load_split(data_cfg, data_cfg.test_dir, classes)[0]
    if split == "validation":
        wanted = set(run.validation_files())
    else:  # the split file's reader also checks that each image still has the content the run trained beside
        sides = splits.read_split_file(run.split, Path(data_cfg.root))
        wanted = {file for file, (side, _) in sides.items() if side == splits.TEST}
    return both.subset(np.array([i for i, f in enumerate(both.files) if f in wanted], dtype=int))


def evaluate_ensemble(runs: list[Run], split: str | None = None, out_dir: Path | None = None,
                      tta: bool = False) -> Path:
    """`braintumor evaluate --ensemble`: the mean of several runs' probabilities on one split (e.g. the seeds
    of one configuration), written as the usual reports with leak-free metrics; returns the output folder."""
    if len(runs) < 2:
        raise UserError("--ensemble needs at least two run directories; for one run use --run RUN_DIR")
    grouped = [run for run in runs if run.protocol() != "official"]
    if grouped:
        raise UserError(f"{grouped[0].path} trained under protocol {grouped[0].protocol()}, whose test part is its "
                        "own; ensemble runs of the official protocol, or compare grouped runs with braintumor compare")
    configs = [(run.read_config(), run.classes()) for run in runs]
    (cfg, classes), pipeline = configs[0], _image_pipeline(configs[0][0])
    split = split or cfg.data.test_dir
    for run, (other, other_classes) in zip(runs[1:], configs[1:], strict=True):
        if other_classes != classes or _image_pipeline(other) != pipeline:
            raise UserError(f"{run.path} has other classes or another image pipeline than {runs[0].path} "
                            f"({other_classes}, {_image_pipeline(other)} vs {classes}, {pipeline}); "
                            "ensemble only runs trained on the same data, image size and preprocessing")
    data_cfg = dataclasses.replace(cfg.data, make_synthetic_if_missing=False)
    scorers = [load_scorer(run) for run in runs]
    chosen, _, _, _ = load_split(data_cfg, split, classes)
    dest = out_dir or runs[0].path.parent / f"ensemble-{split}-{rundir.timestamp()}"
    with rundir.staged_dir(dest) as tmp, logs.log_to_file(Evaluation(tmp).log):
        _evaluate_split(scorers, chosen, classes, tmp, cfg.seed,
                        {"split": split, "ensemble": [str(run.path) for run in runs]}, data_cfg,
                        tta=tta, leak_free=split != cfg.data.train_dir)
    log.info(f"written to {dest}")
    return dest


def _image_pipeline(cfg: Config) -> tuple:
    """What decides the images a model sees: the same for every run of an ensemble."""
    return cfg.data.root, cfg.data.image_size, tuple(cfg.data.preprocess)
