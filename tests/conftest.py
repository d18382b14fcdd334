"""Shared fixtures: a tiny synthetic data set, tiny configs, one trained run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from braintumor.data.synth import make_dataset

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-tumor-mri"
needs_real_data = pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason="real data set not at ../shared/data/brain-tumor-mri (CI has it)")


def pytest_collection_modifyitems(config, items):
    """The files with the most slow tests first: pytest-xdist's loadfile hands out whole files in this order, so the
    longest start first and no worker is left alone with one at the end (a file's own order is kept)."""
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Training 16 and Testing 6 images per class, 96 px JPEGs."""
    return make_dataset(tmp_path_factory.mktemp("data") / "synth", train_per_class=16, test_per_class=6,
                        size=96, seed=0)


@pytest.fixture
def write_config(tmp_path, synth_root):
    """Write a tiny simple_cnn config (32 px, 1 epoch) plus `sections` overrides; return its path."""

    def write(name: str = "tiny", **sections) -> Path:
        cfg = {
            "seed": 0,
            "data": {"root": str(synth_root), "image_size": 32, "val_fraction": 0.25,
                     "cache_dir": str(tmp_path / "cache")},
            "model": {"backbone": "simple_cnn", "weights": "none", "mode": "full"},
            "train": {"epochs": 1, "batch_size": 8, "precision": "float32"},
            "output": {"dir": str(tmp_path / "outputs")},
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


@pytest.fixture
def slow_config(write_config):
    """Six epochs of 64 px (about a second each): when the first has ended, seconds of work are left, so a signal
    or a kill lands mid-run (two epochs of 32 px once completed between two looks of a loaded CI machine)."""
    return write_config("slow", data={"image_size": 64}, train={"epochs": 6, "early_stopping_patience": 0})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synth_root) -> Path:
    """One completed 2-epoch run, shared by the tests that only read a run directory."""
    from braintumor.core.config import parse_config
    from braintumor.engine.train import run

    base = tmp_path_factory.mktemp("run")
    cfg = parse_config({
        "name": "shared", "label": "shared-run", "seed": 0,
        "data": {"root": str(synth_root), "image_size": 32, "val_fraction": 0.25, "cache_dir": str(base / "cache")},
        "model": {"backbone": "simple_cnn", "weights": "none", "mode": "full"},
        "train": {"epochs": 2, "batch_size": 8, "precision": "float32"},
        "output": {"dir": str(base / "outputs")},
    }, "test")
    return run(cfg)
