"""The command line a newcomer meets: help, version, no TensorFlow for validate and --help, quiet start-up."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from braintumor import __version__
from braintumor.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
# TensorFlow's C++ start-up lines: absl's notice and glog-style "I0000 00:00:... file.cc:NN] ..." lines
CHATTER = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\])")


def _python(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["validate", "configs/quickstart.yaml"],
                                  ["validate", "study"], ["predict", "--help"], ["adapt", "--help"],
                                  ["data", "audit", "--help"]])
def test_help_and_validate_never_import_tensorflow(argv):
    code = ("import sys\nfrom braintumor.cli import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
            "print('HEAVY', heavy, 'RC', rc)")
    result = _python(code, *argv)
    assert "HEAVY [] RC 0" in result.stdout, result.stdout + result.stderr


def _actions(parser):
    for action in parser._actions:
        yield parser.prog, action
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices, dict):
                yield from _actions(action.choices[sub])


def test_every_argument_of_every_command_has_help():
    undocumented = [f"{prog}: {action.dest}" for prog, action in _actions(build_parser())
                    if not action.help and action.dest != "command" and action.dest != "data_command"]
    assert not undocumented


def test_help_shows_defaults_version_and_the_config_reference(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "braintumor train quickstart" in top and "--version" in top
    assert main(["data", "synth", "--help"]) == 0
    assert "(default: 60)" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    train_help = capsys.readouterr().out
    assert 'README.md, section "Configs"' in train_help and "braintumor validate CONFIG" in train_help
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"braintumor {__version__}"


def test_a_config_typo_answers_before_tensorflow_loads():
    code = ("import sys\nfrom braintumor.cli import main\nrc = main(sys.argv[1:])\n"
            "print('RC', rc, 'HEAVY', sorted(m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules))")
    result = _python(code, "train", "configs/quickstart.yaml", "--set", "train.epoch=3")
    assert "RC 2 HEAVY []" in result.stdout
    assert result.stderr.strip() == ("error: configs/quickstart.yaml: unknown key 'train.epoch'; "
                                     "did you mean 'train.epochs'?")


def test_native_stderr_filter_drops_tensorflow_chatter_and_keeps_the_rest():
    code = r"""
import os, sys
from braintumor.core.logs import native_stderr_filtered
with native_stderr_filtered(enabled=sys.argv[1] == "on"):
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1795782102.672107    7662 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"E0000 00:00:1795782108.346835    7662 cuda_platform.cc:52] failed call to cuInit: 303\n")
    print("a real problem", file=sys.stderr)
print("after", file=sys.stderr)
"""
    assert _python(code, "on").stderr == "a real problem\nafter\n"
    assert "failed call to cuInit" in _python(code, "off").stderr  # what --debug shows


def test_one_trace_per_model_is_not_reported_as_retracing_unless_debugging():
    """Every Keras model's predict step has the same code, so TensorFlow took the first trace of each model of an
    ensemble for a retrace of one function and warned on stderr from the fifth model on."""
    code = r"""
import sys
import tensorflow as tf
from braintumor.core.logs import setup_console
setup_console(debug=sys.argv[1] == "debug")

def model_step():
    @tf.function(reduce_retracing=True)
    def one_step(x):
        return x * 2
    return one_step

for size in range(1, 9):
    model_step()(tf.zeros((size,)))
"""
    assert "retracing" not in _python(code, "plain").stderr
    assert "triggered tf.function retracing" in _python(code, "debug").stderr


@pytest.mark.slow
def test_quickstart_prints_no_tensorflow_line_before_ours_and_reaches_90_percent(tmp_path):
    """The newcomer's first command, as is, in a fresh folder: the first line on either stream is ours, the
    synthetic data set is made in ./data/synthetic, and the run reaches 0.90 Testing accuracy."""
    result = subprocess.run(
        [sys.executable, "-m", "braintumor.cli", "train", str(ROOT / "configs/quickstart.yaml"),
         "--set", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
    lines = [line for line in re.split(r"[\r\n]", result.stdout) if line.strip()]
    assert lines[0].startswith("data root data/synthetic is absent"), lines[:3]
    assert not [line for line in lines if CHATTER.match(line)]
    assert (tmp_path / "data" / "synthetic" / "Training").is_dir()
    (metrics,) = (tmp_path / "outputs").glob("quickstart-*/metrics.json")
    assert json.loads(metrics.read_text())["accuracy"] >= 0.90


def test_python_dash_m_braintumor_is_the_command():
    result = subprocess.run([sys.executable, "-m", "braintumor", "--version"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": SRC}, cwd=ROOT)
    assert (result.returncode, result.stdout.strip()) == (0, f"braintumor {__version__}"), result.stderr


def test_a_reader_that_stops_early_gets_no_traceback():
    """`braintumor validate configs/*.yaml | head -1`: the reader is gone before the first line is written."""
    configs = sorted(str(path) for path in (ROOT / "configs").glob("*.yaml"))
    process = subprocess.Popen([sys.executable, "-m", "braintumor", "validate", *configs], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC}, cwd=ROOT)
    process.stdout.close()
    stderr = process.stderr.read()
    assert (process.wait(timeout=60), stderr) == (141, "")


def test_the_wheel_lists_every_package_and_ships_the_configs():
    """pyproject lists packages by hand (configs/ is mapped in from the top of the repository), so a new
    package left out of the list would be missing from an installed wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(path.parent.relative_to(ROOT / "src").parts) for path in (ROOT / "src").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"braintumor.configs"}
    assert setuptools["package-dir"]["braintumor.configs"] == "configs"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_no_command_prints_tensorflow_start_up_lines(tmp_path, synth_root, trained_run):
    """Each command that loads TensorFlow, in a fresh process: no oneDNN, CUDA stub or cuInit line on stderr,
    and evaluate loads the saved model there and writes its log. (`train` is
    test_quickstart_prints_no_tensorflow_line_before_ours.) The processes run side by side."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 0, "data": {"root": str(synth_root), "image_size": 32, "val_fraction": 0.25,
                            "cache_dir": str(tmp_path / "cache")},
        "model": {"backbone": "simple_cnn", "weights": "none", "mode": "full"},
        "train": {"epochs": 1, "batch_size": 8, "precision": "float32"}, "output": {"dir": str(tmp_path)}}))
    assert main(["sweep", str(config), "--dry-run"]) == 0
    env = {**os.environ, "PYTHONPATH": SRC}

    def start(name: str, *args: str) -> subprocess.Popen:
        with (tmp_path / f"{name}.err").open("w") as err:
            return subprocess.Popen([sys.executable, "-m", "braintumor", *args], stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, cwd=tmp_path)

    run_dir, port = str(trained_run), _free_port()
    serve = start("serve", "serve", "--run", run_dir, "--port", str(port))
    others = {name: start(name, *args) for name, args in {
        "sweep-task": ["sweep", "--task", str(next(tmp_path.glob("sweep-tiny-*"))), "0"],  # trains one tiny run
        "evaluate": ["evaluate", "--run", run_dir, "--out", str(tmp_path / "eval")],
        "predict": ["predict", "--run", run_dir, str(synth_root / "Testing")],
        **{f"export-{fmt}": ["export", "--run", run_dir, "--format", fmt, "--out", str(tmp_path / "export")]
           for fmt in ("savedmodel", "onnx", "tflite")},
    }.items()}
    try:
        deadline = time.monotonic() + 300
        while not _answers(f"http://127.0.0.1:{port}/"):
            assert serve.poll() is None and time.monotonic() < deadline, "braintumor serve did not come up"
            time.sleep(1)
        assert {name: process.wait(timeout=600) for name, process in others.items()} == dict.fromkeys(others, 0)
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    assert "Testing: accuracy" in (tmp_path / "eval" / "eval.log").read_text()
    assert (tmp_path / "eval" / "metrics.json").is_file()
    for name in ["serve", *others]:
        chatter = [line for line in (tmp_path / f"{name}.err").read_text().splitlines() if CHATTER.match(line)]
        assert not chatter, f"{name}: {chatter}"
    for fmt in ("savedmodel", "onnx", "tflite"):  # nothing but the check's progress bar: no converter warnings
        lines = (tmp_path / f"export-{fmt}.err").read_text().replace("\r", "\n").splitlines()
        assert [line for line in lines if line.strip() and not line.startswith("checking ")] == [], fmt
        assert (tmp_path / "export" / fmt / "model_card.json").is_file()
