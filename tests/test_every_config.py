"""Every file in configs/, as a user runs it, through every command: train → evaluate → predict with
Grad-CAM → export (onnx, savedmodel, tflite) → the demo's classify → adapt; sweep listings through
`sweep --dry-run` and `validate`.

Each config runs at a tiny size (weights none, its backbone's smallest image size, float32, one epoch after any
warm-up, a few images per class of one synthetic set); everything else is the shipped file's own,
so a setting only one config uses (two convs per block, grayscale, precise BatchNorm, a frozen
backbone) meets every command. Tests are parametrized per config and command, so a failure names both.
Configs whose runs have the identical inference graph (the study's modes and optimizers of one backbone)
share the commands that only run that graph: predict with Grad-CAM, export and the demo (see CHECKED_GRAPHS).
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from braintumor.cli import main
from braintumor.core.backbones import BACKBONES
from braintumor.core.config import load_config
from braintumor.core.run import Run
from braintumor.data.synth import make_dataset
from braintumor.engine.scoring import Scores, load_scorer

pytestmark = pytest.mark.slow

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
LISTINGS = [p for p in SHIPPED if "configs" in (yaml.safe_load(p.read_text()) or {})]
EXPERIMENTS = [p for p in SHIPPED if p not in LISTINGS]
# ResNet50's and InceptionV3's configs run in the extended tier (`pytest -m extended`), outside CI's 10 minutes:
# TensorFlow spends minutes of CPU on their graphs however tiny the data (InceptionV3's first full-training step
# took 67 s; each export about a minute per format). Their Grad-CAM layer and fine-tune boundary, per mode, are
# checked in seconds by tests/test_gradcam.py and tests/test_models.py.
CI_FAMILIES = {"simple_cnn", "vgg16"}


def _family(config: Path) -> str:
    return load_config(config).model.backbone


def _param(config: Path):
    return pytest.param(config, id=config.stem, marks=[] if _family(config) in CI_FAMILIES else [pytest.mark.extended])
FORMATS = ["onnx", "savedmodel", "tflite"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """4 Training and 2 Testing images per class: the fewest that still give a stratified validation split."""
    return make_dataset(tmp_path_factory.mktemp("every") / "synth", train_per_class=4, test_per_class=2,
                        size=96, seed=0)


def tiny_overrides(config: Path, root: Path, work: Path) -> list[str]:
    cfg = load_config(config)
    return [
        f"data.root={root}", f"data.cache_dir={work / 'cache'}", f"output.dir={work / 'outputs'}",
        f"data.image_size={BACKBONES[cfg.model.backbone].min_size}",
        "data.val_fraction=0.25",  # 4 of the 16 Training images: one per class
        "model.weights=none",
        f"train.epochs={cfg.train.warmup_epochs + 1}",  # the warm-up must end before the last epoch
        # float32 on every machine: `auto` picks mixed bfloat16 on CPUs with bfloat16 instructions, whose float32
        # exports differ from model.keras by more than the 1e-4 checked here (tests/test_export.py checks that a
        # bfloat16 run's card states how far)
        "train.precision=float32",
    ]


@dataclass
class Trained:
    config: Path
    rc: int
    error: str
    run_dir: Path | None
    work: Path
    reference: tuple[list[Path], Scores] | None = None  # Testing files and the run's calibrated scores of them

    def completed(self) -> Path:
        if self.rc != 0:
            pytest.fail(f"train {self.config.name} failed, so this command has no run: {self.error}")
        return self.run_dir

    def expected(self, root: Path) -> tuple[list[Path], Scores]:
        """The Testing files, and the run's scores of them (model.keras's probabilities, temperature-scaled, and
        the out-of-distribution verdicts): what every command's answer is checked against (once per config)."""
        if self.reference is None:
            from braintumor.data.decode import decode_image

            cfg = load_config(self.completed() / "config.yaml")
            files = sorted((root / "Testing").rglob("*.jpg"))
            images = np.stack([decode_image(f, cfg.data.image_size, cfg.data.preprocess) for f in files])
            self.reference = files, load_scorer(Run(self.run_dir))(images)
        return self.reference


@pytest.fixture(scope="module", params=[_param(p) for p in EXPERIMENTS])
def trained(request, tiny_root, tmp_path_factory) -> Trained:
    """One tiny training run of this config; module-scoped and parametrized, so pytest runs every command
    of one config before training the next, and the run is deleted when its config is done."""
    config = request.param
    work = tmp_path_factory.mktemp(config.stem)
    overrides = [arg for item in tiny_overrides(config, tiny_root, work) for arg in ("--set", item)]
    rc = main(["train", str(config), *overrides])
    runs = sorted((work / "outputs").glob("*/status.json"))
    error = json.loads(runs[0].read_text()).get("error") if runs else "no run folder was made"
    yield Trained(config, rc, f"exit {rc}: {error}", runs[0].parent if runs else None, work)
    shutil.rmtree(work, ignore_errors=True)  # an ImageNet backbone's run is over 100 MB
    keras.backend.clear_session()
    gc.collect()


def test_train(trained):
    run_dir = trained.completed()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert "accuracy" in json.loads((run_dir / "metrics.json").read_text())


def test_evaluate(trained, capsys):
    run_dir = trained.completed()
    out = trained.work / "evaluated"
    assert main(["evaluate", "--run", str(run_dir), "--out", str(out)]) == 0, capsys.readouterr().err
    assert 0 <= json.loads((out / "metrics.json").read_text())["accuracy"] <= 1


def test_predict_with_gradcam(trained, tiny_root, capsys):
    run_dir = trained.completed()
    _checked_with_the_same_graph("predict --gradcam", trained)
    cams = trained.work / "gradcam"
    capsys.readouterr()
    rc = main(["predict", "--run", str(run_dir), str(tiny_root / "Testing"), "--json", "--gradcam", str(cams)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err.strip().splitlines()[-1:]
    files, expected = trained.expected(tiny_root)
    predictions = {Path(p["file"]): list(p["probabilities"].values()) for p in json.loads(captured.out)}
    assert np.abs(np.array([predictions[f] for f in files]) - expected.probabilities).max() < 1e-4
    assert len(list(cams.rglob("*.png"))) == len(files)


def _run_export(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """The exported model in its own runtime (onnxruntime, TensorFlow, the TFLite interpreter)."""
    import tensorflow as tf

    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(path))  # held: its functions reference its variables
        return loaded.serve(images).numpy()
    from ai_edge_litert.interpreter import Interpreter  # LiteRT, as on a device

    interpreter = Interpreter(model_path=str(path))
    rows = []
    for image in images:  # the TFLite batch is fixed at 1
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    return np.stack(rows)


NOT_THE_GRAPH = ("trainable", "compile_config", "shared_object_id")


def _architecture(run_dir: Path) -> str:
    """model.keras's inference graph: its layer graph without what training alone sets (trainable flags, the
    optimizer, a frozen backbone called with training=False: an export runs every layer in inference mode anyway),
    the object ids Keras writes to mark shared objects, and the model's name (which names the mode)."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()
                    if k not in NOT_THE_GRAPH and not (k == "training" and v is False)}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        model = json.loads(archive.read("config.json"))
    model["config"].pop("name")
    graph = json.dumps(strip(model), sort_keys=True)
    return re.sub(r'"input_layer(_\d+)?"', '"input_layer"', graph)  # Keras numbers unnamed inputs per process


# Predict, Grad-CAM, export and the demo run the inference graph: the same layers for configs that differ only
# in what training does (mode, optimizer, learning rate, augmentation, schedule), which is how the study's
# configs of one backbone differ. Tracing and converting a graph costs far more CPU than the few images
# (tf2onnx and the TFLite converter: about a minute for ResNet50 or InceptionV3 per format), so such configs
# share those commands: the first config of a graph runs them, and each later one must have the identical
# graph (checked from its own model.keras), or it runs them too. Training and evaluate run for every config.
CHECKED_GRAPHS: dict[str, str] = {}  # command and architecture → the config whose run checked them


def _checked_with_the_same_graph(command: str, trained: Trained) -> None:
    """Skip `command` for this config when an identical inference graph already passed it; else claim the graph
    (a failing first config keeps the claim, so its failure is not repeated by every later config)."""
    key = f"{command}:{_architecture(trained.completed())}"
    checked_by = CHECKED_GRAPHS.setdefault(key, trained.config.stem)
    if checked_by != trained.config.stem:
        pytest.skip(f"{command}: the same inference graph as {checked_by}'s run, checked there")


@pytest.mark.parametrize("fmt", FORMATS)
def test_export(trained, fmt, tiny_root, capsys):
    pytest.importorskip("tf2onnx", reason="needs the [export] extra")
    run_dir = trained.completed()
    _checked_with_the_same_graph(f"export {fmt}", trained)
    from braintumor.apps.export import FORMATS

    out = trained.work / "export" / fmt / FORMATS[fmt].file  # export --out DIR writes DIR/<format>/<file>
    assert main(["export", "--run", str(run_dir), "--format", fmt, "--out", str(trained.work / "export")]) == 0, \
        capsys.readouterr().err.strip().splitlines()[-1:]
    files, expected = trained.expected(tiny_root)
    cfg = load_config(run_dir / "config.yaml")
    from braintumor.data.decode import decode_image

    images = np.stack([decode_image(f, cfg.data.image_size, cfg.data.preprocess) for f in files])
    assert np.abs(_run_export(fmt, out, images.astype(np.float32)) - expected.probabilities).max() < 1e-4


def test_demo_classify(trained, tiny_root):
    pytest.importorskip("gradio", reason="needs the [demo] extra")
    from braintumor.apps.serve import build_demo, example_files

    run_dir = trained.completed()
    _checked_with_the_same_graph("demo", trained)
    files, expected = trained.expected(tiny_root)
    demo = build_demo(Run(run_dir), example_files(Run(run_dir)))
    (classify,) = [f.fn for f in demo.fns.values() if f.api_name == "classify"]
    for index in (int(np.argmax(expected.in_distribution)), int(np.argmin(expected.in_distribution))):
        probabilities, picture, text = classify(str(files[index]))[:3]
        if not expected.in_distribution[index]:  # the detector's verdict, as predict's: a warning, no class
            assert probabilities is None and "does not look like the brain MRI slices" in text
            continue
        assert np.abs(np.array(list(probabilities.values())) - expected.probabilities[index]).max() < 1e-4
        picture = Image.open(picture) if isinstance(picture, str | Path) else picture  # a cached PNG's path
        assert max(probabilities, key=probabilities.get) in text and np.asarray(picture).ndim == 3


def test_adapt(trained, tiny_root, capsys):
    """AdaBN with the Testing images as the new site: a model with BatchNorm gets a new complete run with its own
    reports; one without (VGG16) is refused in one line, exit 2, and nothing is written."""
    run_dir = trained.completed()
    _checked_with_the_same_graph("adapt", trained)
    out = trained.work / "adapted"
    rc = main(["adapt", "--run", str(run_dir), "--data", str(tiny_root / "Testing"), "--out", str(out)])
    err = capsys.readouterr().err
    if '"BatchNormalization"' not in _architecture(run_dir):
        assert rc == 2 and "no BatchNormalization layer" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
        return
    assert rc == 0, err.strip().splitlines()[-1:]
    assert json.loads((out / "status.json").read_text())["state"] == "completed"
    testing = list((tiny_root / "Testing").rglob("*.jpg"))
    assert json.loads(Run(out).adaptation.read_text())["images"] == len(testing)
    assert 0 <= json.loads((out / "metrics.json").read_text())["accuracy"] <= 1


@pytest.mark.parametrize("listing", LISTINGS, ids=[p.stem for p in LISTINGS])
def test_listing_sweep_dry_run(listing, tmp_path, capsys):
    listed = yaml.safe_load(listing.read_text())["configs"]
    assert main(["sweep", str(listing), "--seeds", "0", "--dry-run", "--set", f"output.dir={tmp_path}"]) == 0
    (sweep_dir,) = tmp_path.glob("sweep-*")
    assert len(json.loads((sweep_dir / "manifest.json").read_text())["runs"]) == len(listed)
    assert f"{len(listed)} planned" in capsys.readouterr().out


@pytest.mark.parametrize("listing", LISTINGS, ids=[p.stem for p in LISTINGS])
def test_listing_validate(listing, capsys):
    """`braintumor validate configs/*.yaml`, as the README suggests: a listing is checked through its configs."""
    assert main(["validate", *map(str, SHIPPED)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    for name in yaml.safe_load(listing.read_text())["configs"]:
        assert name in printed
