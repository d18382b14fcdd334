"""The command line a newcomer meets: help, version, no TensorFlow for validate and --help, quiet start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "braintumor train configs/quickstart.yaml" in top and "--version" in top
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    assert "(default: 60)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out
    assert 'README.md, section "Configs"' in train_help and "braintumor validate CONFIG" in train_help
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"braintumor {__version__}"


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


@pytest.mark.slow
def test_quickstart_prints_no_tensorflow_line_before_ours(tmp_path):
    """The newcomer's first command, in a fresh folder: the first line on either stream is ours."""
    result = subprocess.run(
        [sys.executable, "-m", "braintumor.cli", "train", str(ROOT / "configs/quickstart.yaml"),
         "--set", "train.epochs=1", "--set", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
    lines = [line for line in re.split(r"[\r\n]", result.stdout) if line.strip()]
    assert lines[0].startswith("data root data/synthetic is absent"), lines[:3]
    assert not [line for line in lines if CHATTER.match(line)]
