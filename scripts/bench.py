"""Benchmark the CPU speed-ups of issue 5, each as a ratio of two timings taken side by side in one run.

1. the feature-extraction experiment (configs/vgg16_features.yaml): cached head training vs the naive
   frozen-backbone fit, equal epochs, same data: wall-time ratio;
2. data load, first run (decode) vs second run (decoded-image cache);
3. `braintumor train` training images/s with online augmentation (configs/vgg16_adam.yaml, online) vs bare
   model.fit on in-memory arrays with the same model, batch and validation data;
4. training images/s, float32 vs mixed_bfloat16, for VGG16, ResNet50, InceptionV3;
5. (extra) training images/s, XLA on vs off.

Prints a table and writes BENCHMARKS.md. Everything runs through the package's own functions; weights are
`none` (no download; speed does not depend on weight values).

    python scripts/bench.py --quick      # under 10 minutes on a 2-core CPU
    python scripts/bench.py              # full settings: all images, 128 px for (1) and (3), 224 px for (4)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
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

from braintumor.core.config import Config, load_config
from braintumor.data import dataset as data
from braintumor.engine import optim, runtime, train
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


QUICK = Plan("quick", feature_size=64, feature_every=3, feature_epochs=30, load_size=224, pipeline_size=64,
             pipeline_every=2, pipeline_epochs=4, speed_size=128, speed_steps=5)
FULL = Plan("full", feature_size=128, feature_every=1, feature_epochs=30, load_size=224, pipeline_size=128,
            pipeline_every=1, pipeline_epochs=4, speed_size=224, speed_steps=8)


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
    """`braintumor train` in this process: wall seconds, run directory, what it printed."""
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        run_dir = train.run(cfg)
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
    naive_cfg = _config("vgg16_features", work, root, plan.feature_size, *overrides, "train.feature_cache=false")
    cached_cfg = _config("vgg16_features", work, root, plan.feature_size, *overrides)
    dataset = data.load_dataset(cached_cfg)  # decode once here, so both runs read the decoded-image cache
    _say(f"(1) naive frozen-backbone run: {plan.feature_epochs} epochs at {plan.feature_size} px ...")
    naive_s, naive_dir, naive_log = _fresh(_timed_run, naive_cfg)
    _say(f"    {naive_s:.1f} s; cached run (feature cache cold) ...")
    cached_s, cached_dir, cached_log = _fresh(_timed_run, cached_cfg)
    _say(f"    {cached_s:.1f} s; cached run again (feature cache warm) ...")
    warm_s, warm_dir, warm_log = _fresh(_timed_run, cached_cfg)
    _say(f"    {warm_s:.1f} s")
    assert "feature cache: off" in naive_log and "feature cache: miss" in cached_log, "unexpected cache path"
    assert "feature cache: miss" not in warm_log, "the warm run missed the feature cache"
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
    for _ in range(steps + 2):
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
    args = parser.parse_args()
    source = Path(args.data).resolve()
    if not (source / "Training").is_dir():
        sys.exit(f"data set not found at {source}; pass --data PATH (a folder with Training/ and Testing/)")
    plan = QUICK if args.quick else FULL
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="braintumor-bench-"))
    try:
        decode = data_load(plan, source, work)
        fc = feature_cache(plan, source, work)
        pipe = _fresh(pipeline, plan, source, work)
        speed = _fresh(precision_and_xla, plan, source, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = _rows(plan, fc, decode, pipe, speed)
    seconds = time.perf_counter() - start
    report = _markdown(plan, _machine(), rows, seconds, source, (load_before, os.getloadavg()[0]))
    Path(args.out).write_text(report)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'ratio':>8}  target")
    for figure, _, ratio, target in rows:
        print(f"{figure:<{width}}  {ratio:>8}  {target}")
    print(f"\n{seconds / 60:.1f} minutes; details in {args.out}")


if __name__ == "__main__":
    main()
