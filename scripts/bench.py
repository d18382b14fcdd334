"""Benchmark the CPU speed-ups of issue 5, each as a ratio of two timings taken side by side in one run.

1. the feature-extraction experiment (configs/vgg16_features.yaml): cached head training vs the naive
   frozen-backbone fit, equal epochs, same data: wall-time ratio;
2. data load, first run (decode) vs second run (decoded-image cache);
3. `braintumor train` training images/s with online augmentation (configs/vgg16_adam.yaml, online) vs bare
   model.fit on in-memory arrays with the same model, batch and validation data;
4. training images/s, float32 vs mixed_bfloat16, for VGG16, ResNet50, InceptionV3;
5. (extra) training images/s, XLA on vs off;
6. (issue 12) fine-tune epochs with offline augmentation, naive vs prefix-cached, per backbone at 128 and 224 px,
   projected from interleaved step timings; the study's nine experiments at 224 px, 20 epochs; cache size on disk;
7. (issue 12) `braintumor train` end to end, naive vs prefix-cached, at 128 px, vs the projection.
8. `braintumor predict` images/s on a folder of real images vs bare model.predict on the decoded arrays;
9. (issue 17) `braintumor predict` on the Testing folder, whole process: peak memory and images/s against
   --batch-size, beside the PyPI peer detect-tumor 0.1.1 (VGG16 ONNX, one image at a time) where it is installed.

Prints a table and writes BENCHMARKS.md. Everything runs through the package's own functions; weights are
`none` (no download; speed does not depend on weight values).

    python scripts/bench.py --quick      # under 10 minutes on a 2-core CPU
    python scripts/bench.py              # full settings: all images, 128 px for (1) and (3), 224 px for (4)
    python scripts/bench.py --quick --only prefix   # (6) and (7) alone, replacing their section of BENCHMARKS.md
    python scripts/bench.py --only memory           # (9) alone (about 6 minutes), replacing its section
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import sklearn
import tensorflow as tf

from braintumor.core.atomic import write_text
from braintumor.core.config import Config, load_config
from braintumor.data import dataset as data
from braintumor.engine import optim, prefix_cache, runtime, train
from braintumor.models.build import build_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri"
BACKBONES = ("vgg16", "resnet50", "inceptionv3")


@dataclass(frozen=True)
class Plan:
    name: str
    feature_size: int  # (1) image size
    feature_every: int  # (1) every n-th image of each class folder (1: all images)
    feature_epochs: int
    load_size: int  # (2)
    pipeline_size: int  # (3)
    pipeline_every: int  # (3) every n-th image of each class folder
    pipeline_epochs: int  # (3) at least 2: the first epoch (tracing) is not timed
    speed_size: int  # (4) and (5)
    speed_steps: int  # (4) and (5) timed training steps, after two untimed ones
    prefix_sizes: tuple[int, ...]  # (6) image sizes of the naive vs prefix-cached fine-tune epochs (224: the study)
    prefix_every: int  # (6) every n-th image: the images that the cache is built from and batches drawn from
    prefix_steps: int  # (6) timed steps of each kind, in turn, after one untimed one
    e2e_every: int  # (7) every n-th image for the end-to-end runs
    e2e_epochs: int  # (7)


QUICK = Plan("quick", feature_size=64, feature_every=3, feature_epochs=30, load_size=224, pipeline_size=64,
             pipeline_every=2, pipeline_epochs=4, speed_size=128, speed_steps=5, prefix_sizes=(128, 224),
             prefix_every=32, prefix_steps=3, e2e_every=16, e2e_epochs=3)
FULL = Plan("full", feature_size=128, feature_every=1, feature_epochs=30, load_size=224, pipeline_size=128,
            pipeline_every=1, pipeline_epochs=4, speed_size=224, speed_steps=8, prefix_sizes=(128, 224),
            prefix_every=4, prefix_steps=6, e2e_every=4, e2e_epochs=5)
STUDY_SIZE, STUDY_EPOCHS = 224, 20
FINE_TUNE_CONFIGS = {"vgg16": "vgg16_adam", "resnet50": "resnet50_adam", "inceptionv3": "inception_adam"}


# ---------------------------------------------------------------- helpers

def _config(name: str, work: Path, root: Path, size: int, *overrides: str) -> Config:
    """A study config from configs/, pointed at `root` and the benchmark's own cache and output folders."""
    return load_config(ROOT / "configs" / f"{name}.yaml", [
        f"data.root={root}", f"data.image_size={size}", f"data.cache_dir={work / 'cache'}",
        f"output.dir={work / 'outputs'}", "model.weights=none", "seed=0", *overrides])


def _subset(source: Path, dest: Path, every: int) -> Path:
    """Every n-th image of each class folder, as symbolic links (the same files, fewer of them)."""
    if every == 1:
        return source
    for class_dir in sorted(p for p in source.glob("*/*") if p.is_dir()):
        target = dest / class_dir.relative_to(source)
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[::every]:
            (target / path.name).symlink_to(path)
    return dest


def _fresh(function, *args):
    """`function(*args)` in a new Python process: state that TensorFlow leaves behind after a few runs slowed later
    training in the same process by up to 50 % here, which would bias whichever side ran later."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _timed_run(cfg: Config) -> tuple[float, Path, str]:
    """`braintumor train` in this process: wall seconds, run directory, what it printed and logged."""
    log = io.StringIO()
    handler, logger = logging.StreamHandler(log), logging.getLogger("braintumor")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            run_dir = train.run(cfg)
    finally:
        logger.removeHandler(handler)
    return time.perf_counter() - start, run_dir, log.getvalue()


def _accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["accuracy"]


def _compiled(cfg: Config, num_classes: int, xla: bool = False) -> keras.Model:
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_dtype_policy(cfg.train.precision)
    model = build_model(cfg.model, cfg.data.image_size, num_classes)
    model.compile(optimizer=optim.make_optimizer(cfg.train, steps_per_epoch=1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=xla)
    return model


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the figures

def feature_cache(plan: Plan, source: Path, work: Path) -> dict:
    """(1) cached vs naive frozen-backbone training of configs/vgg16_features.yaml, equal epochs."""
    root = _subset(source, work / "features-data", plan.feature_every)
    overrides = (f"train.epochs={plan.feature_epochs}", "train.early_stopping_patience=0")
    naive_cfg = _config("vgg16_features", work, root, plan.feature_size, *overrides, "train.prefix_cache=false")
    cached_cfg = _config("vgg16_features", work, root, plan.feature_size, *overrides)
    dataset = data.load_dataset(cached_cfg)  # decode once here, so both runs read the decoded-image cache
    _say(f"(1) naive frozen-backbone run: {plan.feature_epochs} epochs at {plan.feature_size} px ...")
    naive_s, naive_dir, naive_log = _fresh(_timed_run, naive_cfg)
    _say(f"    {naive_s:.1f} s; cached run (feature cache cold) ...")
    cached_s, cached_dir, cached_log = _fresh(_timed_run, cached_cfg)
    _say(f"    {cached_s:.1f} s; cached run again (feature cache warm) ...")
    warm_s, warm_dir, warm_log = _fresh(_timed_run, cached_cfg)
    _say(f"    {warm_s:.1f} s")
    assert "prefix cache: off" in naive_log and "prefix cache: miss" in cached_log, "unexpected cache path"
    assert "prefix cache: miss" not in warm_log, "the warm run missed the feature cache"
    return {"train": len(dataset.train.files), "val": len(dataset.val.files), "test": len(dataset.test.files),
            "naive_s": naive_s, "cached_s": cached_s, "warm_s": warm_s,
            "accuracy": [_accuracy(naive_dir), _accuracy(cached_dir), _accuracy(warm_dir)],
            "precision": json.loads((cached_dir / "env.json").read_text())["precision"]}


def data_load(plan: Plan, source: Path, work: Path) -> dict:
    """(2) load_dataset with an empty decoded-image cache, then again with it filled."""
    cfg = _config("vgg16_features", work, source, plan.load_size, f"data.cache_dir={work / 'cache-load'}")
    _say(f"(2) data load at {plan.load_size} px: decoding ...")
    start = time.perf_counter()
    dataset = data.load_dataset(cfg)
    first = time.perf_counter() - start
    start = time.perf_counter()
    data.load_dataset(cfg)
    second = time.perf_counter() - start
    _say(f"    {first:.1f} s, then {second:.2f} s from the cache")
    images = len(dataset.train.files) + len(dataset.val.files) + len(dataset.test.files)
    return {"images": images, "first_s": first, "second_s": second}


def _history_rows(history: Path) -> int:
    if not history.is_file():
        return 0
    with history.open() as handle:
        return sum(1 for _ in csv.DictReader(handle))


def _alternate(process: subprocess.Popen, history: Path, epochs: int, bare_epoch) -> tuple[list[float], list[float]]:
    """Each time the running `braintumor train` ends an epoch (a new history.csv row), pause it (SIGSTOP) and run one
    bare epoch, then let it go on: both sides meet this machine's slow and fast spells alike. Returns the command's
    epoch seconds from its second epoch on (pauses excluded) and the bare epochs' seconds."""
    command, bare, rows, resumed = [], [], 0, None
    while process.poll() is None:
        now = _history_rows(history)
        if now > rows:
            rows = now
            if resumed is not None:
                command.append(time.perf_counter() - resumed)
            if rows < epochs:
                process.send_signal(signal.SIGSTOP)
                bare.append(bare_epoch())
                process.send_signal(signal.SIGCONT)
            resumed = time.perf_counter()
        time.sleep(0.02)
    return command, bare


def _wait_for_run_dir(output_dir: Path, process: subprocess.Popen) -> Path:
    while process.poll() is None:
        found = list(output_dir.glob("*/config.yaml"))
        if found:
            return found[0].parent
        time.sleep(0.05)
    raise RuntimeError("braintumor train ended before writing its run directory")


def _bare_epoch_seconds(model: keras.Model, dataset: data.Dataset, batch: int) -> float:
    """Seconds of one epoch of bare model.fit on in-memory float32 arrays, with the same validation data."""
    start = time.perf_counter()
    model.fit(dataset.train.images.astype(np.float32), dataset.train.labels, batch_size=batch, epochs=1,
              validation_data=(dataset.val.images.astype(np.float32), dataset.val.labels), verbose=0)
    return time.perf_counter() - start


def pipeline(plan: Plan, source: Path, work: Path) -> dict:
    """(3) `braintumor train` (online augmentation) vs bare model.fit, epoch by epoch in turn (see _alternate):
    training images/s over the median epoch of each; the first epoch of each side (tracing) is not counted."""
    root = _subset(source, work / "pipeline-data", plan.pipeline_every)
    settings = [f"data.root={root}", f"data.image_size={plan.pipeline_size}", f"data.cache_dir={work / 'cache'}",
                f"output.dir={work / 'pipeline'}", "model.weights=none", "seed=0", "augmentation.mode=online",
                f"train.epochs={plan.pipeline_epochs}", "train.early_stopping_patience=0"]
    config = ROOT / "configs" / "vgg16_adam.yaml"
    cfg = load_config(config, settings)
    cfg.train.precision = runtime.resolve_precision(cfg.train.precision)[0]
    dataset = data.load_dataset(cfg)  # fills the decoded-image cache that the command reads
    batch = cfg.train.batch_size
    _say(f"(3) bare model.fit and braintumor train (online augmentation), {plan.pipeline_epochs} epochs each in "
         f"turn, at {plan.pipeline_size} px ...")
    keras.backend.clear_session()
    model = _compiled(cfg, len(dataset.classes))
    _bare_epoch_seconds(model, dataset, batch)  # traces the training step
    command = [sys.executable, "-m", "braintumor.cli", "train", str(config), *sum((["--set", s] for s in settings), [])]
    with (work / "pipeline.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        run_dir = _wait_for_run_dir(work / "pipeline", process)
        seconds, bare = _alternate(process, run_dir / "history.csv", plan.pipeline_epochs,
                                   lambda: _bare_epoch_seconds(model, dataset, batch))
    if process.returncode != 0:
        raise RuntimeError(f"braintumor train failed: {(work / 'pipeline.log').read_text()[-2000:]}")
    assert json.loads((run_dir / "env.json").read_text())["precision"] == cfg.train.precision
    train_n = len(dataset.train.files)
    cli_rate, bare_rate = train_n / float(np.median(seconds)), train_n / float(np.median(bare))
    _say(f"    {cli_rate:.1f} vs {bare_rate:.1f} images/s")
    return {"train": train_n, "val": len(dataset.val.files), "batch": batch, "precision": cfg.train.precision,
            "cli_rate": cli_rate, "bare_rate": bare_rate, "cli_seconds": seconds, "bare_seconds": bare}


def _paired_rates(cfgs: list[tuple[Config, bool]], images: np.ndarray, labels: np.ndarray, steps: int) -> list[float]:
    """Training images/s of each (config, XLA) model, their steps taken in turn so that the machine's slower and
    faster spells hit all alike: batch size over the median step time, after two untimed steps each."""
    keras.backend.clear_session()
    models = [_compiled(cfg, 4, xla) for cfg, xla in cfgs]
    batch = cfgs[0][0].train.batch_size
    x, y = images[:batch].astype(np.float32), labels[:batch]
    spent: list[list[float]] = [[] for _ in models]
    for _ in range(steps + 1):
        for model, times in zip(models, spent, strict=True):
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - start)
    return [batch / float(np.median(times[2:])) for times in spent]


def precision_and_xla(plan: Plan, source: Path, work: Path) -> dict:
    """(4) float32 vs mixed_bfloat16 per backbone, (5) XLA on vs off; fine-tune mode, batch 16."""
    def cfg(*overrides: str) -> Config:
        return _config("vgg16_adam", work, source, plan.speed_size, "train.batch_size=16", *overrides)

    dataset = data.load_dataset(cfg())
    images, labels = dataset.train.images, dataset.train.labels
    rates: dict = {}
    for backbone in BACKBONES:
        _say(f"(4) {backbone}, float32 and mixed_bfloat16 at {plan.speed_size} px ...")
        pair = [(cfg(f"model.backbone={backbone}", f"train.precision={precision}"), False)
                for precision in ("float32", "mixed_bfloat16")]
        rates[backbone, "float32"], rates[backbone, "mixed_bfloat16"] = _paired_rates(
            pair, images, labels, plan.speed_steps)
        _say(f"    {rates[backbone, 'float32']:.1f} and {rates[backbone, 'mixed_bfloat16']:.1f} images/s")
    precision = runtime.resolve_precision("auto")[0]
    _say(f"(5) vgg16 {precision}, XLA off and on ...")
    rates["xla", False], rates["xla", True] = _paired_rates(
        [(cfg(f"train.precision={precision}"), xla) for xla in (False, True)], images, labels, plan.speed_steps)
    _say(f"    {rates['xla', False]:.1f} and {rates['xla', True]:.1f} images/s")
    return {"rates": rates, "xla_precision": precision}


def _vgg16_run(work: Path, source: Path, size: int):
    """A completed-looking run folder of configs/vgg16_adam.yaml (float32, random weights), made without training:
    predicting costs the same whatever the weights are."""
    from braintumor.core.run import Run

    cfg = _config("vgg16_adam", work, source, size, "train.precision=float32")
    made = Run(work / f"vgg16-{size}-run")
    made.path.mkdir()
    made.save_config(cfg)
    classes = sorted(p.name for p in (source / "Testing").iterdir() if p.is_dir())
    made.write_data({"classes": classes})
    keras.utils.set_random_seed(0)
    build_model(cfg.model, size, len(classes)).save(made.model)
    made.set_status("completed")
    return made


def predict_throughput(plan: Plan, source: Path, work: Path) -> tuple[str, str, str, str]:
    """(6) the predict pipeline (threaded decoding overlapping batched inference) on the Testing image files vs
    bare model.predict on the same images already decoded, same model and batch; the model load is not timed on
    either side. Runs in turn, median of three each. Returns the report row."""
    from braintumor.apps.predict import decoded_batches, load_run
    from braintumor.data.files import walk

    folder = _subset(source, work / "predict-data", plan.pipeline_every) / "Testing"
    run, files, batch = load_run(_vgg16_run(work, source, plan.speed_size)), walk(folder)[0], 32

    def command() -> float:
        start, skipped = time.perf_counter(), []
        for _, images in decoded_batches(run, files, batch, skipped):
            run.scorer(images)
        return time.perf_counter() - start

    arrays = np.stack([run.decode(f) for f in files]).astype(np.float32)

    def bare() -> float:
        start = time.perf_counter()
        run.model.predict(arrays, batch_size=batch, verbose=0)
        return time.perf_counter() - start

    _say(f"(6) braintumor predict vs bare model.predict, vgg16 at {plan.speed_size} px, {len(files)} images ...")
    command(), bare()  # tracing
    timings = [(command(), bare()) for _ in range(3)]
    cli_rate = len(files) / float(np.median([c for c, _ in timings]))
    bare_rate = len(files) / float(np.median([b for _, b in timings]))
    _say(f"    {cli_rate:.1f} vs {bare_rate:.1f} images/s")
    return ("8. braintumor predict on a folder vs bare model.predict",
            f"vgg16 (weights none, float32), {plan.speed_size} px, batch {batch}, {len(files)} Testing JPEG files "
            f"(decoded by {os.cpu_count()} threads while the model predicts) vs the same images pre-decoded in "
            f"memory; median of 3 in turn: {cli_rate:.1f} vs {bare_rate:.1f} images/s",
            f"{cli_rate / bare_rate:.2f}", ">= 0.8")


def _prefix_timing(backbone: str, size: int, root: Path, work: Path, steps: int) -> dict:
    """(6) one backbone's fine-tune config (offline augmentation) at `size`: build the prefix cache over the
    training images of `root`, then time, in turn, a training step of the whole model on images (naive), of the
    suffix on cached prefix outputs read from the memory-mapped file (cached), of the full-mode model (at the study's
    size only), and a validation (predict) step of each; medians after one untimed round (tracing)."""
    precision = runtime.resolve_precision("auto")[0]
    cfg = _config(FINE_TUNE_CONFIGS[backbone], work, root, size, f"train.precision={precision}")
    dataset = data.load_dataset(cfg)
    images, labels = train._training_arrays(cfg, dataset)
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy(precision)
    model = build_model(cfg.model, size, len(dataset.classes))
    where = prefix_cache.cut_model(cfg, model)
    cache_dir = work / f"prefix-cache-{backbone}-{size}"
    start = time.perf_counter()
    cached = prefix_cache.cached_outputs(where, images, cache_dir, "training")
    build_s = time.perf_counter() - start
    (cache_file,) = cache_dir.glob("prefix-*.npy")
    full_cfg = _config(FINE_TUNE_CONFIGS[backbone], work, root, size, f"train.precision={precision}", "model.mode=full")
    full = build_model(full_cfg.model, size, len(dataset.classes)) if size == STUDY_SIZE else None
    for fit_model in filter(None, (model, where.suffix, full)):
        fit_model.compile(optimizer=optim.make_optimizer(cfg.train, steps_per_epoch=1),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    batch = cfg.train.batch_size

    def pixels(index):
        return images[index].astype(np.float32)

    def outputs(index):  # what the cached fit's input pipeline does: read a batch from the memory-mapped file
        return cached[index].astype(np.float32)

    kinds = {"naive": lambda i: model.train_on_batch(pixels(i), labels[i]),
             "cached": lambda i: where.suffix.train_on_batch(outputs(i), labels[i]),
             "naive_val": lambda i: model.predict_on_batch(pixels(i)),
             "cached_val": lambda i: where.suffix.predict_on_batch(outputs(i))}
    if full:
        kinds["full"] = lambda i: full.train_on_batch(pixels(i), labels[i])
    spent: dict[str, list[float]] = {kind: [] for kind in kinds}
    rng = np.random.default_rng(0)
    for _ in range(steps + 1):
        index = np.sort(rng.choice(len(images), batch, replace=False))
        for kind, step in kinds.items():
            start = time.perf_counter()
            step(index)
            spent[kind].append(time.perf_counter() - start)
    return {"step_s": {kind: float(np.median(times[1:])) for kind, times in spent.items()},
            "build_images_per_s": len(images) / build_s, "build_s": build_s, "built_images": len(images),
            "cache_bytes_per_image": cached.nbytes / len(images),
            "cache_header_bytes": cache_file.stat().st_size - cached.nbytes, "augmented_factor":
            len(images) / len(dataset.train.files), "boundary": where.boundary, "precision": precision,
            "batch": batch}


def _epoch_s(timing: dict, kind: str, train_n: int, val_n: int) -> float:
    """Projected seconds of one epoch: training steps plus validation steps, at the measured medians."""
    batch, step = timing["batch"], timing["step_s"]
    val_kind = "cached_val" if kind == "cached" else "naive_val"
    return -(-train_n // batch) * step[kind] + -(-val_n // batch) * step[val_kind]


def prefix_speed(plan: Plan, source: Path, work: Path) -> dict:
    """(6) naive vs prefix-cached fine-tune epochs per backbone and size, each timing in a fresh process; the real
    data set's split sizes, for projecting the study."""
    root = _subset(source, work / "prefix-data", plan.prefix_every)
    counts = data.load_dataset(_config("vgg16_adam", work, source, 64))
    timings = {}
    for size in plan.prefix_sizes:
        for backbone in BACKBONES:
            _say(f"(6) {backbone} fine-tune at {size} px: prefix cache build, then naive and cached steps in turn ...")
            timings[backbone, size] = t = _fresh(_prefix_timing, backbone, size, root, work, plan.prefix_steps)
            _say(f"    steps {', '.join(f'{k} {v:.2f} s' for k, v in t['step_s'].items())}; cache build "
                 f"{t['build_images_per_s']:.1f} images/s")
    return {"timings": timings, "train_files": len(counts.train.files), "val": len(counts.val.files),
            "subset_every": plan.prefix_every}


def end_to_end(plan: Plan, source: Path, work: Path) -> dict:
    """(7) `braintumor train` of configs/vgg16_adam.yaml at 128 px on a subset, naive then prefix-cached, equal
    epochs and seed: wall seconds (setup and Testing evaluation included) and Testing accuracy of each."""
    root = _subset(source, work / "e2e-data", plan.e2e_every)
    overrides = (f"train.epochs={plan.e2e_epochs}", "train.early_stopping_patience=0",
                 f"data.cache_dir={work / 'e2e-cache'}")
    result = {}
    for side, switch in (("naive", "false"), ("cached", "true")):
        cfg = _config("vgg16_adam", work, root, 128, *overrides, f"train.prefix_cache={switch}")
        if side == "naive":
            dataset = data.load_dataset(cfg)  # decode once here, so both runs read the decoded-image cache
        _say(f"(7) vgg16_adam at 128 px, {plan.e2e_epochs} epochs, {side} ...")
        seconds, run_dir, _ = _fresh(_timed_run, cfg)
        result[side] = {"s": seconds, "accuracy": _accuracy(run_dir),
                        "env": json.loads((run_dir / "env.json").read_text())["prefix_cache"]}
        _say(f"    {seconds:.1f} s, Testing accuracy {result[side]['accuracy']:.4f}")
    result.update(train_files=len(dataset.train.files), val=len(dataset.val.files), test=len(dataset.test.files),
                  every=plan.e2e_every, epochs=plan.e2e_epochs)
    return result


def _study(prefix: dict) -> list[tuple[str, float, float]]:
    """(experiment, naive seconds, braintumor seconds) for the study's nine experiments at 224 px, 20 epochs,
    projected from the measured steps: I full (no augmentation, no cache), II and III fine-tune with offline
    augmentation; III has the same prefix cache key as II (only the optimizer differs), so it reuses II's cache."""
    rows = []
    train_n, val_n = prefix["train_files"], prefix["val"]
    for backbone in BACKBONES:
        t = prefix["timings"][backbone, STUDY_SIZE]
        augmented = round(train_n * t["augmented_factor"])
        full = STUDY_EPOCHS * _epoch_s(t, "full", train_n, val_n)
        naive = STUDY_EPOCHS * _epoch_s(t, "naive", augmented, val_n)
        cached = STUDY_EPOCHS * _epoch_s(t, "cached", augmented, val_n)
        build = (augmented + val_n) / t["build_images_per_s"]
        rows += [(f"{backbone} I (full)", full, full), (f"{backbone} II (fine-tune, Adam)", naive, build + cached),
                 (f"{backbone} III (fine-tune, RMSprop)", naive, cached)]
    return rows


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def _prefix_section(plan: Plan, prefix: dict, e2e: dict, load: tuple[float, float]) -> str:
    train_n, val_n = prefix["train_files"], prefix["val"]
    lines = ["<!-- prefix-cache -->", "## Prefix cache (issue 12): fine-tune on cached frozen-prefix outputs", "",
             f"Written by `python scripts/bench.py{' --quick' if plan.name == 'quick' else ''} --only prefix` on "
             f"{datetime.now():%Y-%m-%d %H:%M}. 1-minute load average at the start and end: {load[0]:.2f}, "
             f"{load[1]:.2f} (2 cores shared with other work; the timed kinds of step run in turn, so load hits "
             "all alike). Weights `none`; precision as `auto` picks. Each (backbone, size) runs in a fresh process: "
             f"the prefix cache is built over the training images of 1 image in {prefix['subset_every']} of each "
             "class folder, offline augmented copies included (real build, timed: images/s), then one training step "
             f"of each kind on a random batch of them, in turn, {plan.prefix_steps} timed rounds after 1 untimed; "
             "the cached step reads its batch from the memory-mapped cache file, as fit does. An epoch is projected "
             f"for the real data set's split ({train_n} training files, x2 with the offline copies, {val_n} "
             "validation images): training steps plus validation steps at the medians.", "",
             "| backbone | size | boundary | naive step | cached step | naive epoch | cached epoch | ratio | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    targets = {"vgg16": 3, "resnet50": 2, "inceptionv3": 2}
    for (backbone, size), t in prefix["timings"].items():
        augmented = round(train_n * t["augmented_factor"])
        naive, cached = _epoch_s(t, "naive", augmented, val_n), _epoch_s(t, "cached", augmented, val_n)
        lines.append(f"| {backbone} | {size} px | {t['boundary']} | {t['step_s']['naive']:.2f} s | "
                     f"{t['step_s']['cached']:.3f} s | {naive:.0f} s | {cached:.0f} s | **{naive / cached:.1f}x** | "
                     f">= {targets[backbone]}x |")
    if STUDY_SIZE not in plan.prefix_sizes:
        return "\n".join(lines + [""])
    lines += ["", f"### The study's nine experiments at {STUDY_SIZE} px, {STUDY_EPOCHS} epochs (projected)", "",
              "Projected from the 224 px measurements above: epochs x (training + validation steps); braintumor's "
              "II includes building the cache once (training + validation images, at the measured build rate); "
              "III has the same cache key as II (only the optimizer differs) and reuses it; I (full) trains every "
              "layer, so both columns are equal. Early stopping could end runs sooner; not projected.", "",
              "| experiment | naive | braintumor | ratio |", "|---|---|---|---|"]
    study = _study(prefix)
    lines += [f"| {name} | {_hours(naive)} | {_hours(ours)} | {naive / ours:.1f}x |" for name, naive, ours in study]
    total_naive, total_ours = sum(r[1] for r in study), sum(r[2] for r in study)
    lines += [f"| **total** | **{_hours(total_naive)}** | **{_hours(total_ours)}** | "
              f"**{total_naive / total_ours:.1f}x** |", "", f"### Cache size on disk at {STUDY_SIZE} px", "",
              "Measured bytes per image of the cache file built above (compute dtype), times the study's training "
              "(with offline copies) and validation images.", "",
              "| backbone | boundary | precision policy | per image | training + validation cache |",
              "|---|---|---|---|---|"]
    for backbone in BACKBONES:
        t = prefix["timings"][backbone, STUDY_SIZE]
        total = t["cache_bytes_per_image"] * (round(train_n * t["augmented_factor"]) + val_n)
        lines.append(f"| {backbone} | {t['boundary']} | {t['precision']} | {t['cache_bytes_per_image'] / 1024:.0f} "
                     f"KiB | {total / 2**30:.2f} GiB |")
    t = prefix["timings"].get(("vgg16", 128))
    if t and e2e:
        train_files, val = e2e["train_files"], e2e["val"]
        augmented = round(train_files * t["augmented_factor"])
        naive = e2e["epochs"] * _epoch_s(t, "naive", augmented, val)
        cached = e2e["epochs"] * _epoch_s(t, "cached", augmented, val) + (augmented + val) / t["build_images_per_s"]
        lines += ["", "### End to end vs projection (vgg16_adam.yaml, 128 px)", "",
                  f"`braintumor train` on 1 image in {e2e['every']} of each class folder ({train_files} training "
                  f"files, {augmented} with offline copies, {val} validation, {e2e['test']} Testing images), "
                  f"{e2e['epochs']} epochs, seed 0, naive then cached (sequential, each in a fresh process). Wall time "
                  "includes what the projection leaves out: model build, data load, Testing evaluation, reports.", "",
                  "| path | projected fit | end-to-end wall | Testing accuracy |", "|---|---|---|---|",
                  f"| naive | {naive:.0f} s | {e2e['naive']['s']:.0f} s | {e2e['naive']['accuracy']:.4f} |",
                  f"| prefix-cached (cache build included) | {cached:.0f} s | {e2e['cached']['s']:.0f} s | "
                  f"{e2e['cached']['accuracy']:.4f} |", "", f"env.json of the cached run: `{e2e['cached']['env']}`"]
    return "\n".join(lines + [""])


SECTIONS = ("<!-- prefix-cache -->", "<!-- predict-memory -->")  # in their order in BENCHMARKS.md


def _write_section(path: Path, section: str) -> None:
    """Replace one section of BENCHMARKS.md (from its marker, its first line, to the next section's marker or the
    end), keeping the rest; a missing section goes in its place in SECTIONS' order."""
    text = path.read_text() if path.exists() else ""
    parts = {"": text}
    for marker in SECTIONS:
        for key, part in list(parts.items()):
            if marker in part:
                parts[key], rest = part.split(marker, 1)
                parts[marker] = marker + rest
    parts[section.split("\n", 1)[0]] = section
    ordered = [parts.get("", "").rstrip("\n"), *(parts[m].rstrip("\n") for m in SECTIONS if m in parts)]
    write_text(path, "\n\n".join(p for p in ordered if p) + "\n")


PEER = "detect-tumor 0.1.1"
# The peer's documented use (detect_tumor README): one TumorDetector, .predict(path) per image
PEER_LOOP = """import sys
from pathlib import Path
from detect_tumor import TumorDetector
detector = TumorDetector()
for path in sorted(p for p in Path(sys.argv[1]).rglob('*') if p.suffix.lower() in ('.jpg', '.jpeg', '.png')):
    detector.predict(str(path))
"""
MEMORY_BATCHES = (1, 4, 8, 16, 32, 64)
MEMORY_LIMIT = 2**30  # the bound for predict's default batch: under 1 GB, at least 2x the peer's speed


def _peak(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident memory (bytes) of one whole process, start-up and model load included."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()[-500:]}")
    process.stderr.close()
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def predict_memory(source: Path, work: Path) -> dict:
    """(9) `braintumor predict --json` on the Testing folder with a VGG16 224 px float32 run, one process per
    batch size, then the peer's loop on the same folder."""
    from braintumor.data.files import walk

    folder = source / "Testing"
    images = len(walk(folder)[0])
    run = _vgg16_run(work, source, STUDY_SIZE)
    sides = {}
    for batch in MEMORY_BATCHES:
        _say(f"(9) braintumor predict, vgg16 {STUDY_SIZE} px, {images} images, --batch-size {batch} ...")
        sides[batch] = _peak([sys.executable, "-m", "braintumor", "predict", "--run", str(run.path), str(folder),
                              "--json", "--batch-size", str(batch)])
        _say(f"    {sides[batch][0]:.1f} s, peak {sides[batch][1] / 2**20:.0f} MiB")
    try:
        import detect_tumor  # noqa: F401  (only whether it is installed)
    except ImportError:
        peer = None
        _say(f"(9) {PEER} is not installed (pip install detect-tumor==0.1.1): no peer column")
    else:
        _say(f"(9) {PEER}, {images} images one at a time ...")
        peer = _peak([sys.executable, "-c", PEER_LOOP, str(folder)])
        _say(f"    {peer[0]:.1f} s, peak {peer[1] / 2**20:.0f} MiB")
    return {"images": images, "sides": sides, "peer": peer}


def _memory_section(memory: dict, load: tuple[float, float]) -> str:
    images, peer, machine = memory["images"], memory["peer"], _machine()
    vector = sorted({flag for flag in Path("/proc/cpuinfo").read_text().split() if flag.startswith("avx")})
    lines = ["<!-- predict-memory -->", "## predict: peak memory against batch size (issue 17)", "",
             f"Written by `python scripts/bench.py --only memory` on {datetime.now():%Y-%m-%d %H:%M} on "
             f"{machine['cpu']}, {machine['cores']} cores, vector instructions {' '.join(vector) or 'none'}; "
             f"1-minute load average at the start and end: {load[0]:.2f}, {load[1]:.2f}. Each row is one whole "
             "process, start-up and model load included: `braintumor predict --run RUN Testing/ --json "
             f"--batch-size N` on the "
             f"{images} Testing images with a VGG16 run at {STUDY_SIZE} px (float32, random weights: speed and "
             f"memory do not depend on weight values); peak resident memory from the kernel (wait4)."
             + (f" The peer: {PEER} from PyPI (VGG16 ONNX at 240 px on onnxruntime, one image per call, as its "
                "README shows), on the same folder." if peer else f" {PEER} was not installed: no peer row."), "",
             "| command | batch | wall | images/s | peak memory |", "|---|---|---|---|---|"]
    for batch, (seconds, peak) in memory["sides"].items():
        lines.append(f"| braintumor predict | {batch} | {seconds:.1f} s | {images / seconds:.1f} | "
                     f"{peak / 2**20:.0f} MiB |")
    if peer:
        lines.append(f"| {PEER} | 1 | {peer[0]:.1f} s | {images / peer[0]:.1f} | {peer[1] / 2**20:.0f} MiB |")
    fitting = [b for b, (s, m) in memory["sides"].items()
               if m < MEMORY_LIMIT and (peer is None or s * 2 <= peer[0])]
    if fitting:
        best = min(fitting, key=lambda b: memory["sides"][b][0])
        lines += ["", f"Fastest batch under 1 GiB{' and at least 2x the peer' if peer else ''}: **{best}**."]
    else:
        lines += ["", "No batch size stayed under 1 GiB" + (" at 2x the peer's speed" if peer else "") + "."]
    return "\n".join(lines + [""])


# ---------------------------------------------------------------- report

def _machine() -> dict:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "bf16": runtime.cpu_supports_bf16(),
            "platform": platform.platform(), "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values) + " s"


def _rows(plan: Plan, fc: dict, decode: dict, pipe: dict, speed: dict) -> list[tuple[str, str, str, str]]:
    """(figure, what was measured, ratio, target) rows of the table."""
    subset = "all images" if plan.feature_every == 1 else f"1 image in {plan.feature_every}"
    rows = [
        ("1. feature-extraction experiment, cached vs naive",
         f"vgg16_features.yaml, {plan.feature_size} px, {plan.feature_epochs} epochs each, {subset} of each class "
         f"folder: {fc['train']} train + {fc['val']} val + {fc['test']} test images, {fc['precision']}; "
         f"naive {fc['naive_s']:.1f} s, cached {fc['cached_s']:.1f} s (feature cache cold: the backbone runs "
         f"once), warm {fc['warm_s']:.1f} s (cache hit; {fc['naive_s'] / fc['warm_s']:.1f}x); Testing accuracy "
         f"naive {fc['accuracy'][0]:.4f}, cached {fc['accuracy'][1]:.4f}, warm {fc['accuracy'][2]:.4f}",
         f"{fc['naive_s'] / fc['cached_s']:.1f}x", ">= 10x"),
        ("2. data load, decode vs decoded-image cache",
         f"load_dataset, all {decode['images']} images at {plan.load_size} px: first {decode['first_s']:.1f} s, "
         f"second {decode['second_s']:.2f} s",
         f"{decode['first_s'] / decode['second_s']:.0f}x", ">= 20x"),
        ("3. braintumor train (online augmentation) vs bare model.fit",
         f"vgg16_adam.yaml with augmentation.mode=online (fine-tune), {plan.pipeline_size} px, batch "
         f"{pipe['batch']}, {pipe['precision']}, {pipe['train']} train + {pipe['val']} val images; epochs in turn, "
         f"median of each (command, checkpoints included: {_seconds(pipe['cli_seconds'])}; bare fit on float32 "
         f"arrays with the same validation data: {_seconds(pipe['bare_seconds'])}): "
         f"{pipe['cli_rate']:.1f} vs {pipe['bare_rate']:.1f} training images/s",
         f"{pipe['cli_rate'] / pipe['bare_rate']:.2f}", ">= 0.9"),
    ]
    rates = speed["rates"]
    for backbone in BACKBONES:
        f32, bf16 = rates[backbone, "float32"], rates[backbone, "mixed_bfloat16"]
        rows.append((f"4. {backbone}: mixed_bfloat16 vs float32",
                     f"fine-tune, {plan.speed_size} px, batch 16, median of {plan.speed_steps} alternating steps: "
                     f"{bf16:.1f} vs {f32:.1f} training images/s", f"{bf16 / f32:.2f}x", "report; auto picks faster"))
    rows.append(("5. (extra) vgg16: XLA on vs off",
                 f"fine-tune, {plan.speed_size} px, batch 16, {speed['xla_precision']}, median of {plan.speed_steps} "
                 f"alternating steps: {rates['xla', True]:.1f} vs {rates['xla', False]:.1f} training images/s",
                 f"{rates['xla', True] / rates['xla', False]:.2f}x", "report; auto picks faster"))
    return rows


def _markdown(plan: Plan, machine: dict, rows: list, seconds: float, source: Path, load: tuple[float, float]) -> str:
    auto_precision, auto_precision_why = runtime.resolve_precision("auto")
    auto_xla, auto_xla_why = runtime.resolve_xla(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]), "auto")
    lines = [
        "# Benchmarks (issue 5)", "",
        f"Written by `python scripts/bench.py{' --quick' if plan.name == 'quick' else ''}` on "
        f"{datetime.now():%Y-%m-%d %H:%M}, in {seconds / 60:.1f} minutes. Each ratio compares two timings taken "
        "side by side in the same run on the same machine, through the package's own functions; "
        f"data: the real data set ({source.name}), weights `none` (no download; speed does not depend on "
        "weight values).", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, bfloat16 instructions: "
        f"{'yes' if machine['bf16'] else 'no'}; {machine['platform']}.  ",
        f"Versions: Python {machine['python']}, TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
        f"NumPy {machine['numpy']}, scikit-learn {machine['scikit-learn']}.  ",
        f"1-minute load average at the start and end: {load[0]:.2f}, {load[1]:.2f} (other work on the machine slows "
        "whichever side it overlaps).", "",
        "| figure | measured | ratio | target |", "|---|---|---|---|",
        *[f"| {figure} | {measured} | **{ratio}** | {target} |" for figure, measured, ratio, target in rows], "",
        f"`train.precision: auto` picks **{auto_precision}** here ({auto_precision_why}); "
        f"`train.xla: auto` picks **{'on' if auto_xla else 'off'}** ({auto_xla_why}).", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller settings, under 10 minutes on 2 cores")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the real data set (Training/, Testing/)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown report to write")
    parser.add_argument("--only", choices=["all", "prefix", "memory"], default="all",
                        help="prefix: only figures 6 and 7 (issue 12); memory: only figure 9 (issue 17); each "
                        "replaces its own section of the report")
    parser.add_argument("--prefix-sizes", help="figure 6's image sizes, comma-separated (default: 128,224); "
                        "the study tables need 224, figure 7 runs where 128 is among them")
    parser.add_argument("--prefix-steps", type=int, help="figure 6's timed rounds (default: the plan's)")
    args = parser.parse_args()
    source = Path(args.data).resolve()
    if not (source / "Training").is_dir():
        sys.exit(f"data set not found at {source}; pass --data PATH (a folder with Training/ and Testing/)")
    plan = QUICK if args.quick else FULL
    if args.prefix_sizes:
        plan = dataclasses.replace(plan, prefix_sizes=tuple(int(size) for size in args.prefix_sizes.split(",")))
    if args.prefix_steps:
        plan = dataclasses.replace(plan, prefix_steps=args.prefix_steps)
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="braintumor-bench-"))
    if args.only == "memory":
        try:
            section = _memory_section(predict_memory(source, work), (load_before, os.getloadavg()[0]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _write_section(Path(args.out), section)
        print(section)
        return
    try:
        prefix = prefix_speed(plan, source, work)
        e2e = end_to_end(plan, source, work) if 128 in plan.prefix_sizes else None
    finally:
        if args.only == "prefix":
            shutil.rmtree(work, ignore_errors=True)
    section = _prefix_section(plan, prefix, e2e, (load_before, os.getloadavg()[0]))
    if args.only == "prefix":
        _write_section(Path(args.out), section)
        print(section)
        return
    try:
        decode = data_load(plan, source, work)
        fc = feature_cache(plan, source, work)
        pipe = _fresh(pipeline, plan, source, work)
        speed = _fresh(precision_and_xla, plan, source, work)
        predict_row = _fresh(predict_throughput, plan, source, work)
        memory = predict_memory(source, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [*_rows(plan, fc, decode, pipe, speed), predict_row]
    seconds = time.perf_counter() - start
    report = _markdown(plan, _machine(), rows, seconds, source, (load_before, os.getloadavg()[0]))
    write_text(Path(args.out), report)
    for part in (section, _memory_section(memory, (load_before, os.getloadavg()[0]))):
        _write_section(Path(args.out), part)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'ratio':>8}  target")
    for figure, _, ratio, target in rows:
        print(f"{figure:<{width}}  {ratio:>8}  {target}")
    print(f"\n{seconds / 60:.1f} minutes; details in {args.out}")


if __name__ == "__main__":
    main()
