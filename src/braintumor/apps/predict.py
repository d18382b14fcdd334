"""`braintumor predict`: classify image files or folders with a trained run's model.

Each file goes through the run's own decoding and preprocessing (`data.decode.decode_scan` at the
run's image size with its `data.preprocess`, the decoder training and evaluate use), then through
model.keras, whose first layer applies the backbone's preprocessing, and the run's calibration:
temperature-scaled probabilities and whether the image looks like the training data (engine/scoring.py).
A thread pool decodes the next batches while the model predicts the current one. A volume (NIfTI,
multi-frame DICOM, a folder holding one DICOM series) gives a row per classified slice, `FILE#slice=N`,
and a summary row `FILE`.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from braintumor.core.atomic import check_writable_folder
from braintumor.core.errors import UserError, describe
from braintumor.core.run import Run
from braintumor.data.decode import Decoded, decode_image, decode_scan, skip_reason
from braintumor.data.files import READABLE, walk
from braintumor.data.medical import group_series
from braintumor.engine.scoring import Scorer, Scores, load_scorer
from braintumor.results.cells import one_line
from braintumor.results.reports import ood_cells, ood_pairs, prediction_header, write_csv

NOT_LIKE_TRAINING = "not like the training data"  # how the text output marks an out-of-distribution image
PROGRESS_FROM = 50  # files: a progress bar for work of more than a few seconds, none for a handful of files


@dataclass
class RunModel:
    """What predicting with a run needs: its model, class order and input decoding."""

    run: Run
    scorer: Scorer  # the model and its calibration
    classes: list[str]
    image_size: int
    preprocess: list[str]
    backbone: str

    @property
    def model(self) -> keras.Model:
        return self.scorer.model

    @property
    def calibrated(self) -> bool:
        return self.scorer.calibration is not None

    def decode(self, path: Path) -> np.ndarray:
        return decode_image(path, self.image_size, self.preprocess)

    def decode_scan(self, path: Path, slices: str | int = "middle") -> Decoded:
        return decode_scan(path, self.image_size, self.preprocess, slices)


def load_run(run: Run) -> RunModel:
    cfg = run.read_config()
    return RunModel(run, load_scorer(run), run.classes(), cfg.data.image_size, list(cfg.data.preprocess),
                    cfg.model.backbone)


@dataclass
class Prediction:
    file: str  # the file, or FILE#slice=N for one slice of a volume
    probabilities: np.ndarray  # in the run's class order, calibrated where the run is
    in_distribution: bool | None = None  # None: the run has no out-of-distribution detector
    ood_score: float | None = None  # higher is less like the training images
    window: str | None = None  # a scan's window (data/medical.py); with the orientation, the only header-derived values
    orientation: str | None = None  # how a volume was cut into slices (data/medical.py), e.g. "axial"
    slices: int | None = None  # a volume's summary row: the number of slices its probabilities are the mean of
    empty_slices: int | None = None  # and the near-empty slices left out

    def as_dict(self, classes: list[str]) -> dict:
        row = {"file": self.file, "predicted": classes[int(self.probabilities.argmax())],
               "probabilities": {name: float(p) for name, p in zip(classes, self.probabilities, strict=True)},
               "in_distribution": self.in_distribution, "ood_score": self.ood_score}
        extra = {"window": self.window, "orientation": self.orientation, "slices": self.slices,
                 "empty_slices": self.empty_slices}
        return row | {key: value for key, value in extra.items() if value is not None}


@dataclass(frozen=True)
class Input:
    """One image for the model: the file (or series folder) it comes from, its slice, and how it was decoded."""

    path: Path
    slice: int | None
    decoded: Decoded

    @property
    def name(self) -> str:
        return str(self.path) if self.slice is None else f"{self.path}#slice={self.slice}"


def expand_paths(paths: list[Path]) -> tuple[list[Path], list[dict]]:
    """Files to classify: each PATH that is a file, and the image files below each folder (the package's
    one folder walker), a folder holding one DICOM series as one volume; missing paths are returned as skipped."""
    files, missing = [], []
    for path in paths:
        if path.is_dir():
            files += group_series(walk(path)[0])
        elif path.exists():
            files.append(path)
        else:
            missing.append({"file": str(path), "reason": "no such file or folder"})
    return files, missing


def decoded_batches(run: RunModel, files: list[Path], batch_size: int, skipped: list[dict],
                    slices: str = "middle") -> Iterator[tuple[list[Input], np.ndarray]]:
    """Batches of (inputs, uint8 images), decoded by a thread pool a few files ahead of the caller (a volume gives
    its `slices`); a file that fails to decode is appended to `skipped` with the reason and left out."""
    ahead = 2 * batch_size + (os.cpu_count() or 1)  # bounded, so a large folder is not held in memory
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pending: collections.deque = collections.deque()
        queue = iter(files)
        batch_inputs, batch_images = [], []
        while True:
            while len(pending) < ahead and (path := next(queue, None)) is not None:
                pending.append((path, pool.submit(run.decode_scan, path, slices)))
            if not pending:
                break
            path, future = pending.popleft()
            try:
                decoded = future.result()
            except Exception as err:  # noqa: BLE001  (a hostile file raises anything from PIL; skip it, say why)
                skipped.append({"file": str(path), "reason": skip_reason(err)})
                continue
            for number, image in decoded.images:
                batch_inputs.append(Input(path, number, decoded))
                batch_images.append(image)
                if len(batch_inputs) == batch_size:
                    yield batch_inputs, np.stack(batch_images)
                    batch_inputs, batch_images = [], []
        if batch_inputs:
            yield batch_inputs, np.stack(batch_images)


def _gradcam_names(files: list[Path], roots: list[Path]) -> dict[Path, str]:
    """A PNG name per file: its path below the PATH argument it came from, unique."""
    names, taken = {}, set()
    for file in files:
        base = next((file.relative_to(root) for root in roots  # a series folder given as PATH: its own name
                     if root.is_dir() and file.is_relative_to(root) and file != root), Path(file.name))
        name, n = base.with_suffix(".png").as_posix(), 1
        while name in taken:
            n += 1
            name = base.with_name(f"{base.stem}-{n}.png").as_posix()
        taken.add(name)
        names[file] = name
    return names


def _check_writable(folder: Path, option: str, path: Path) -> None:
    try:
        check_writable_folder(folder)
    except OSError as err:
        raise UserError(f"cannot write {option} {path} ({describe(err)}); choose a path in a writable folder") from err


def _file_id(path: Path) -> tuple[int, int] | None:
    """The file's identity (a link or another spelling of a path is the same file), None where there is none."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _check_gradcam_dir(gradcam_dir: Path, paths: list[Path], files: list[Path], names: dict[Path, str]) -> None:
    """Refuse a --gradcam folder whose overlays would replace an input image, or land among the inputs (where the
    next predict or train on that folder would read them as scans); and one that cannot be written."""
    out = gradcam_dir.resolve()
    for folder in paths:
        if folder.is_dir() and out.is_relative_to(folder.resolve()):
            raise UserError(f"--gradcam {gradcam_dir} is inside the input folder {one_line(folder)}, where the "
                            "overlays could replace scans and would be read as scans next time; choose a folder "
                            "outside it")
    inputs = {key: file for file in files if (key := _file_id(file))}
    for name in names.values():
        if (key := _file_id(gradcam_dir / name)) and (replaced := inputs.get(key)):
            raise UserError(f"--gradcam {gradcam_dir} would overwrite the input image {one_line(replaced)} with an "
                            "overlay; choose an output folder that holds no input image")
    _check_writable(gradcam_dir, "--gradcam", gradcam_dir)


def _rows(inputs: list[Input], scores: Scores) -> list[tuple[Input, Prediction]]:
    pairs = ood_pairs(len(inputs), scores.in_distribution, scores.ood_scores)
    return [(item, Prediction(item.name, p, ok, score, item.decoded.window, item.decoded.orientation))
            for item, p, (ok, score) in zip(inputs, scores.probabilities, pairs, strict=True)]


def _with_summaries(results: list[tuple[Input, Prediction]]) -> list[Prediction]:
    """A row per image; after the slices of a volume, its summary row: the mean of their probabilities, the median
    of their out-of-distribution scores, and in distribution where most of its slices are."""
    rows, volume = [], []
    for index, (item, row) in enumerate(results):
        rows.append(row)
        if not item.decoded.volume:
            continue
        volume.append(row)
        if index + 1 == len(results) or results[index + 1][0].decoded is not item.decoded:
            verdicts = [r.in_distribution for r in volume]
            rows.append(Prediction(
                str(item.path), np.mean([r.probabilities for r in volume], axis=0),
                None if None in verdicts else sum(verdicts) * 2 > len(verdicts),
                None if None in verdicts else float(np.median([r.ood_score for r in volume])),
                item.decoded.window, item.decoded.orientation, len(volume), item.decoded.empty_slices))
            volume = []
    return rows


def predict_paths(run: Run, paths: list[Path], batch_size: int, tta: bool = False,
                  gradcam_dir: Path | None = None, gradcam_class: str | None = None, slices: str = "middle",
                  ) -> tuple[list[Prediction], list[dict], list[str]]:
    """Predictions for the readable files (of a volume, its `slices` and a summary), the skipped files with
    reasons, and the class order.

    The inputs and the Grad-CAM folder are checked before the model loads, so a bad output path costs no work."""
    files, skipped = expand_paths(paths)
    names = None
    if gradcam_dir is not None:
        names = _gradcam_names(files, paths)
        _check_gradcam_dir(gradcam_dir, paths, files, names)
    loaded = load_run(run)
    if gradcam_class is not None and gradcam_class not in loaded.classes:
        raise UserError(f"--gradcam-class {gradcam_class!r} is not a class of this run; "
                        f"use one of: {', '.join(loaded.classes)}")
    cam = None
    if gradcam_dir is not None:
        from braintumor.apps.gradcam import GradCam

        cam = GradCam(loaded.model)
    results = []
    with tqdm(total=len(files), desc="predicting", unit="file", leave=False,
              disable=len(files) < PROGRESS_FROM) as bar:
        for inputs, images in decoded_batches(loaded, files, batch_size, skipped, slices):
            scores = loaded.scorer(images, tta, batch_size)
            results += _rows(inputs, scores)
            if cam is not None:
                _write_gradcams(cam, loaded, images, scores.probabilities,
                                [_gradcam_path(gradcam_dir, names, i) for i in inputs], gradcam_class)
            bar.update(sum(item.slice == item.decoded.images[-1][0] for item in inputs))  # files completed
    if not loaded.calibrated:
        print(f"this run has no out-of-distribution detector, so in_distribution is null; fit one with "
              f"{run.how_to_calibrate()} (once)", file=sys.stderr)
    return _with_summaries(results), skipped, loaded.classes


def _gradcam_path(gradcam_dir: Path, names: dict[Path, str], item: Input) -> Path:
    """The overlay of an input: its file's PNG name, with `.slice-N` before the suffix for a slice of a volume."""
    name = Path(names[item.path])
    return gradcam_dir / (name if item.slice is None else name.with_name(f"{name.stem}.slice-{item.slice}.png"))


def _write_gradcams(cam, run: RunModel, images: np.ndarray, probs: np.ndarray, dests: list[Path],
                    gradcam_class: str | None) -> None:
    from braintumor.apps.gradcam import write_png

    explained = (np.full(len(images), run.classes.index(gradcam_class)) if gradcam_class is not None
                 else probs.argmax(axis=1))
    heatmaps, _ = cam(images, explained)
    for dest, image, heatmap, p, k in zip(dests, images, heatmaps, probs, explained, strict=True):
        predicted = int(p.argmax())
        title = f"{run.classes[predicted]} {p[predicted]:.2f}"
        if k != predicted:
            title += f" (map explains {run.classes[k]} {p[k]:.2f})"
        write_png(dest, image, heatmap, title)


def _true_label(file: str, classes: list[str]) -> str:
    """The class a file's folder names (as in ROOT/<split>/<class>/), or "" if its folder is no class."""
    parent = Path(file).parent.name
    return parent if parent in classes else ""


def write_predictions_csv(path: Path, predictions: list[Prediction], classes: list[str]) -> None:
    """predictions.csv's columns; `true` is the file's class folder where it is one of the classes. Where a
    DICOM or NIfTI scan is among the files, last columns `window` and `orientation` say how each scan was windowed
    and how each volume was cut into slices."""
    windows = any(p.window is not None for p in predictions)
    write_csv(path, [*prediction_header(classes), *(["window", "orientation"] if windows else [])], (
        [p.file, _true_label(p.file, classes), classes[int(p.probabilities.argmax())], *p.probabilities.tolist(),
         *ood_cells(p.in_distribution, p.ood_score), *([p.window or "", p.orientation or ""] if windows else [])]
        for p in predictions))


def _notes(p: Prediction) -> str:
    """What a text line adds: the out-of-distribution mark; for a scan its window, for a volume how it was cut, and
    for a volume's summary what it summarises."""
    notes = [NOT_LIKE_TRAINING] if p.in_distribution is False else []
    notes += [f"window {p.window}"] if p.window else []
    notes += [p.orientation] if p.orientation else []
    if p.slices is not None:
        notes.append(f"mean of {p.slices} slice(s)" + (f", {p.empty_slices} near-empty skipped" if p.empty_slices
                                                       else ""))
    return f"  [{'; '.join(notes)}]" if notes else ""


def run_predict(run: Run, paths: list[Path], batch_size: int, as_json: bool = False, csv_path: Path | None = None,
                gradcam_dir: Path | None = None, gradcam_class: str | None = None, tta: bool = False,
                slices: str = "middle") -> None:
    """`braintumor predict`: results on stdout (lines or JSON; one line per image, names escaped), skipped files
    on stderr."""
    if csv_path is not None:
        if csv_path.is_dir():
            raise UserError(f"--csv {csv_path} is a folder; give a file path such as {csv_path / 'predictions.csv'}")
        _check_writable(csv_path.parent, "--csv", csv_path)
    predictions, skipped, classes = predict_paths(run, paths, batch_size, tta, gradcam_dir, gradcam_class, slices)
    for item in skipped:
        print(f"skipped {one_line(item['file'])}: {one_line(item['reason'])}", file=sys.stderr)
    if not predictions:
        raise UserError(f"none of the {len(skipped)} file(s) could be read as an image; "
                        f"pass image files ({READABLE}) or folders holding them")
    if csv_path is not None:
        write_predictions_csv(csv_path, predictions, classes)
    if as_json:
        print(json.dumps([p.as_dict(classes) for p in predictions], indent=1))
    else:
        for p in predictions:
            ranked = sorted(zip(classes, p.probabilities, strict=True), key=lambda kv: -kv[1])
            others = ", ".join(f"{name} {prob:.3f}" for name, prob in ranked[1:])
            print(f"{one_line(p.file)}  {ranked[0][0]} {ranked[0][1]:.3f}  ({others}){_notes(p)}")
    if csv_path is not None:
        print(f"wrote {csv_path}", file=sys.stderr)
    if gradcam_dir is not None:
        print(f"wrote {sum(p.slices is None for p in predictions)} Grad-CAM image(s) to {gradcam_dir}", file=sys.stderr)
