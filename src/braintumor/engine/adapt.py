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
from braintumor.core.errors import UserError, describe
from braintumor.core.run import Run
from braintumor.core.rundir import ensure_writable, staged_dir, timestamp
from braintumor.data.decode import decode_files
from braintumor.data.files import READABLE, walk
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
    """The image files under `folder` (paths relative to it, sorted; class subfolders are just folders), at most
    `max_images` of them drawn with `seed`; and how many there are in all."""
    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a folder; pass a folder of images of the new site")
    found = [path.relative_to(folder).as_posix() for path in walk(folder)[0]]
    if not found:
        raise UserError(f"--data {folder} holds no image files ({READABLE}); pass a folder of images of the new site")
    if len(found) <= max_images:
        return found, len(found)
    rng = np.random.default_rng(seed)
    return [found[i] for i in sorted(rng.permutation(len(found))[:max_images])], len(found)


def images_sha256(folder: Path, files: list[str]) -> str:
    """One SHA-256 over the sorted (relative path, file SHA-256) pairs: names the images, not only their content."""
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(os.fsencode(relative) + f"\t{file_sha256(folder / relative)}\n".encode())
    return digest.hexdigest()


def destination(source: Run, out: Path | None) -> Path:
    """The new run's folder, checked before any work: `out`, or <source>-adapted-<time> beside the source; it must
    not exist (a run is never overwritten) and its parent must be writable."""
    dest = out if out is not None else source.path.parent / f"{source.path.name}-adapted-{timestamp()}"
    if dest.exists():
        raise UserError(f"{dest} already exists; choose a new folder with --out (a run is never overwritten)")
    ensure_writable(dest.parent)
    return dest


def adapt_run(source: Run, folder: Path, max_images: int, out: Path | None = None) -> Path:
    """Write the AdaBN-adapted copy of `source` (statistics from up to `max_images` images under `folder`); returns
    the new run's folder."""
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
    decoding = dataclasses.replace(cfg.data, strict=False)  # an unreadable file is skipped and listed
    images, skipped = decode_files(folder, files, decoding, "adaptation images")
    if not len(images):
        raise UserError(f"none of the {len(files)} image file(s) under --data {folder} could be read (e.g. "
                        f"{skipped[0]['file']}: {skipped[0]['reason']}); pass a folder of readable images")
    skipped_files = {item["file"] for item in skipped}
    used = [file for file in files if file not in skipped_files]
    batches = shuffled_batches(images, cfg.train.batch_size, cfg.seed, len(images))
    recompute_batchnorm(model, layers, tqdm(batches, desc="BatchNorm statistics", unit="batch", leave=False))
    label = f"{cfg.label or cfg.name} + AdaBN {folder.resolve().name}"
    provenance = {
        "method": "AdaBN: each BatchNorm layer's moving mean and variance are the average of its batch statistics "
                  "over the images below (in batches of the run's train.batch_size, drawn in a seeded order); every "
                  "other weight is the source's, bit for bit",
        "source_run": str(source.path.resolve()),
        "data": str(folder.resolve()),
        "images": len(used),
        "images_found": found,
        "max_images": max_images,
        "images_sha256": images_sha256(folder, used),
        "images_sha256_of": "sorted lines '<path relative to data>\\t<file SHA-256>\\n'",
        "skipped": skipped,
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
    log.info(f"adapted {len(layers)} BatchNorm layer(s) of {source.path} on {len(used)} image(s) of {folder} "
             f"({len(skipped)} unreadable skipped): wrote {dest.path}")
    if len(used) < FEW_IMAGES:
        log.warning(f"only {len(used)} image(s) of {folder} were used: BatchNorm statistics from fewer than "
                    f"{FEW_IMAGES} images of a site are noisy; compare {dest.path}'s reports with the source's before "
                    "using it, or adapt again on more images of the site")
    log.info(f"{dest.path} has no calibration (the source's was fitted on features the new statistics change): its "
             f"probabilities are uncalibrated and it flags no image as unlike the training data; fit one with "
             f"{dest.how_to_calibrate()}")
    return dest.path
