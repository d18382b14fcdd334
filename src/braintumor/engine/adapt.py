"""`braintumor adapt`: a run's model with its BatchNorm statistics recomputed on unlabeled images of another site
or scanner (AdaBN, Li et al. 2016), written as a new run; the source run is only read.

Each BatchNorm layer's moving mean and variance become the average of its batch statistics over the new images
(engine/callbacks.py `recompute_batchnorm`, the code of precise BN), every layer's, a frozen one's too: the shift
between sites lives in the statistics of the whole network. Every other weight stays bit-identical.

The new run is a complete run: the source's config (with its label marked, so `compare` does not pool the two as
seeds of one configuration), its training record, the new model.keras, its own Testing reports, and
adaptation.json, the provenance of its statistics. The source's calibration.npz is not carried: its temperature
and out-of-distribution detector were fitted on the source model's features, which the new statistics change.
The folder is built whole as a hidden sibling and renamed into place (core/rundir.py `staged_dir`), so a kill
never leaves a folder named like a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from braintumor.core import logs
from braintumor.core.cache import file_sha256
from braintumor.core.config import DataConfig
from braintumor.core.errors import UserError, describe
from braintumor.core.run import Run
from braintumor.core.rundir import ensure_writable, staged_dir, timestamp
from braintumor.data.decode import decode_scan, skip_reason
from braintumor.data.files import READABLE, walk
from braintumor.data.medical import group_series
from braintumor.data.pixels import UNREADABLE
from braintumor.engine.calibrate import run_dataset
from braintumor.engine.callbacks import batchnorm_layers, recompute_batchnorm, save_atomically, shuffled_batches
from braintumor.engine.evaluate import RECORDED_BY_TRAINING, report_run
from braintumor.engine.scoring import Scorer
from braintumor.models.saved import load_run_model

log = logs.get_logger(__name__)


# AdaBN's statistics are averages over the new site's images, and a few give noisy ones: the recipe's seed 0, adapted on
# 16, 64 and all 394 Testing images, gets 0.789, 0.797 and 0.835 official accuracy (README, Site adaptation)
FEW_IMAGES = 64


def adaptation_images(folder: Path, max_images: int, seed: int) -> tuple[list[str], int]:
    """The inputs under `folder` (paths relative to it, sorted; class subfolders are just folders; a folder holding
    one DICOM series is one input, a volume, as predict reads it), at most `max_images` of them drawn with `seed`;
    and how many there are in all."""
    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a folder; pass a folder of images of the new site")
    found = [path.relative_to(folder).as_posix() for path in group_series(walk(folder)[0])]
    if not found:
        raise UserError(f"--data {folder} holds no image files ({READABLE}); pass a folder of images of the new site")
    if len(found) <= max_images:
        return found, len(found)
    rng = np.random.default_rng(seed)
    return [found[i] for i in sorted(rng.permutation(len(found))[:max_images])], len(found)


@dataclasses.dataclass(frozen=True)
class SiteImages:
    """What `decode_site` read from the new site's files."""

    images: np.ndarray  # at most max_images, uint8, as the run decodes its own
    files: list[str]  # the files they come from (relative paths), the readable ones of those drawn
    skipped: list[dict]  # the unreadable ones, with the reason
    given: int  # images the readable files gave: more than `images` where the draw left some out
    volumes: int  # of the files, volumes (NIfTI, multi-frame DICOM, a DICOM series folder)


def decode_site(folder: Path, files: list[str], data: DataConfig, slices: str, max_images: int,
                seed: int) -> SiteImages:
    """The images of `files` as the run decodes its own (of a volume, its `slices`), at most `max_images` of them:
    where the files give more (all the slices of volumes), a uniform draw with `seed`, kept by reservoir sampling so
    memory holds `max_images` images and one volume."""
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    read, skipped, given, volumes = [], [], 0, 0
    for relative in tqdm(files, desc="decoding adaptation images", unit="file", leave=False):
        try:
            decoded = decode_scan(folder / relative, data.image_size, data.preprocess, slices)
        except UNREADABLE as err:
            skipped.append({"file": relative, "reason": skip_reason(err)})
            continue
        read.append(relative)
        volumes += decoded.volume
        for _, image in decoded.images:
            if len(kept) < max_images:
                kept.append(image)
            elif (slot := rng.integers(given + 1)) < max_images:  # Algorithm R: every image equally likely kept
                kept[slot] = image
            given += 1
    images = np.stack(kept) if kept else np.zeros((0, data.image_size, data.image_size, 3), np.uint8)
    return SiteImages(images, read, skipped, given, volumes)


def images_sha256(folder: Path, files: list[str]) -> str:
    """One SHA-256 over the sorted (relative path, file SHA-256) pairs, a DICOM series folder's files each: names the
    images, not only their content."""
    paths: list[Path] = []
    for relative in files:
        path = folder / relative
        paths += walk(path)[0] if path.is_dir() else [path]
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.fsencode(path.relative_to(folder).as_posix()) + f"\t{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def destination(source: Run, out: Path | None) -> Path:
    """The new run's folder, checked before any work: `out`, or <source>-adapted-<time> beside the source; it must
    not exist (a run is never overwritten) and its parent must be writable."""
    dest = out if out is not None else source.path.parent / f"{source.path.name}-adapted-{timestamp()}"
    if dest.exists():
        raise UserError(f"{dest} already exists; choose a new folder with --out (a run is never overwritten)")
    ensure_writable(dest.parent)
    return dest


def adapt_run(source: Run, folder: Path, max_images: int, out: Path | None = None, slices: str = "middle") -> Path:
    """Write the AdaBN-adapted copy of `source` (statistics from up to `max_images` images under `folder`, of a
    volume its `slices`); returns the new run's folder."""
    cfg = source.read_config()
    files, found = adaptation_images(folder, max_images, cfg.seed)
    dest = destination(source, out)
    about = {key: value for key, value in source.read_metrics().items() if key in RECORDED_BY_TRAINING}
    model = load_run_model(source)
    layers = batchnorm_layers(model)
    if not layers:
        raise UserError(f"{source.path}'s model ({model.name}) has no BatchNormalization layer, and AdaBN only "
                        "recomputes BatchNorm statistics; adapt a run of a backbone with BatchNorm (simple_cnn, "
                        "resnet50, inceptionv3)")
    data = run_dataset(source, "adapt")  # for the new run's own reports on its test part
    site = decode_site(folder, files, cfg.data, slices, max_images, cfg.seed)
    if not len(site.images):
        raise UserError(f"none of the {len(files)} image file(s) under --data {folder} could be read (e.g. "
                        f"{site.skipped[0]['file']}: {site.skipped[0]['reason']}); pass a folder of readable images")
    batches = shuffled_batches(site.images, cfg.train.batch_size, cfg.seed, len(site.images))
    recompute_batchnorm(model, layers, tqdm(batches, desc="BatchNorm statistics", unit="batch", leave=False))
    label = f"{cfg.label or cfg.name} + AdaBN {folder.resolve().name}"
    provenance = {
        "method": "AdaBN: each BatchNorm layer's moving mean and variance are the average of its batch statistics "
                  "over the images below (in batches of the run's train.batch_size, drawn in a seeded order); every "
                  "other weight is the source's, bit for bit",
        "source_run": str(source.path.resolve()),
        "data": str(folder.resolve()),
        "images": len(site.images),
        "images_found": found,
        "images_found_means": "input files under data; a volume (NIfTI, multi-frame DICOM, a DICOM series folder) "
                              "counts once",
        "files": len(site.files),
        "slices": slices,
        "images_given": site.given,
        "images_given_means": "images the files gave (of a volume, its slices with signal); over max_images, a "
                              "uniform draw of max_images of them with the seed",
        "max_images": max_images,
        "images_sha256": images_sha256(folder, site.files),
        "images_sha256_of": "sorted lines '<path relative to data>\\t<file SHA-256>\\n'",
        "skipped": site.skipped,
        "batch_size": cfg.train.batch_size,
        "batches": len(batches),
        "seed": cfg.seed,
        "batchnorm_layers": len(layers),
        "label": label,
        "calibration": "not carried over: the source's temperature and out-of-distribution detector were fitted on "
                       "features that the new statistics change; this run's reports use uncalibrated probabilities. "
                       "Fit one with braintumor calibrate --run NEW_RUN (on the source's training and validation "
                       "images, seen through the new statistics)",
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    try:
        with staged_dir(dest) as staging:  # a kill leaves only a hidden sibling, never a folder named like a run
            staged = Run(staging)
            staged.copy_training_record(source)
            save_atomically(staged.model, model.save)
            report_run(staged, cfg, data, Scorer(model, None), {**about, "adapted_from": str(source.path)},
                       staged)
            staged.write_adaptation(provenance)
            staged.save_config(dataclasses.replace(cfg, label=label))
            staged.set_status("completed")
    except OSError as err:
        raise UserError(f"cannot write the adapted run {dest} ({describe(err)}); free space or choose "
                        "another --out") from err
    dest = Run(dest)
    log.info(f"adapted {len(layers)} BatchNorm layer(s) of {source.path} on {len(site.images)} image(s) of {folder} "
             f"({len(site.skipped)} unreadable skipped): wrote {dest.path}")
    if len(site.images) < FEW_IMAGES:
        more = (f" ({site.volumes} volume(s) gave their middle slice only; --slices all takes every slice)"
                if site.volumes and slices == "middle" else "")
        log.warning(f"only {len(site.images)} image(s) of {folder} were used{more}: BatchNorm statistics from fewer "
                    f"than {FEW_IMAGES} images of a site are noisy; compare {dest.path}'s reports with the source's "
                    "before using it, or adapt again on more images of the site")
    log.info(f"{dest.path} has no calibration (the source's was fitted on features the new statistics change): its "
             f"probabilities are uncalibrated and it flags no image as unlike the training data; fit one with "
             f"{dest.how_to_calibrate()}")
    return dest.path
