"""Config schema: defaults, strict keys and values, overrides, the shipped config files."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from braintumor.cli import main
from braintumor.core.config import Config, load_config, parse_config, read_listing
from braintumor.core.errors import UserError

# experiment configs; a sweep listing (configs/study.yaml) names some of them and is tested in test_sweep.py
CONFIGS = sorted(path for path in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
                 if read_listing(path) is None)


def test_defaults_and_overrides_are_typed():
    cfg = parse_config({}, "test", ["train.epochs=3", "train.learning_rate=1e-5", "data.preprocess=[brain_crop]",
                                    "model.weights=none", "augmentation.enabled=true"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.learning_rate == pytest.approx(1e-5)
    assert cfg.data.preprocess == ["brain_crop"]
    assert cfg.model.weights == "none"
    assert cfg.augmentation.enabled is True and cfg.augmentation.brightness == [0.8, 2.0]
    assert cfg.model.backbone == Config().model.backbone  # untouched keys keep defaults


@pytest.mark.parametrize("raw, expected", [
    ({"trian": {"epochs": 1}}, "unknown key 'trian'; did you mean 'train'?"),
    ({"train": {"learnig_rate": 0.1}}, "unknown key 'train.learnig_rate'; did you mean 'train.learning_rate'?"),
    ({"train": {"learning_rate": -0.001}}, "train.learning_rate = -0.001 is not allowed"),
    ({"model": {"backbone": "alexnet"}}, "model.backbone = 'alexnet' is not allowed; use one of: vgg16"),
    ({"model": {"mode": "frozen"}}, "model.mode = 'frozen' is not allowed; use one of: feature-extraction"),
    ({"train": {"epochs": "ten"}}, "train.epochs = 'ten' must be of type int"),
    ({"train": {"epochs": True}}, "train.epochs = True must be of type int"),
    ({"augmentation": {"brightness": [2.0, 0.8]}}, "augmentation.brightness = [2.0, 0.8] is not allowed"),
    ({"data": {"preprocess": ["blur"]}}, "data.preprocess[0] = 'blur' is not allowed"),
    ({"model": {"backbone": "inceptionv3"}, "data": {"image_size": 64}}, "below inceptionv3's minimum"),
    ({"model": {"backbone": "simple_cnn"}}, "model.weights = 'imagenet' is not allowed"),
    ({"data": "root"}, "data must be a mapping"),
])
def test_bad_configs_name_the_key(raw, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        parse_config(raw, "test")


@pytest.mark.parametrize("override, message", [
    ("train.epochs", "must look like KEY=VALUE"),
    ("train..epochs=2", "must look like KEY=VALUE"),
    ("=2", "must look like KEY=VALUE"),
    ("train.epochs=[1", "the value is not plain YAML"),
    ("train.epochs=!!python/object/apply:os.system [true]", "the value is not plain YAML"),
    ("train.epochs={a: 1", "the value is not plain YAML"),
    ("train=3", "train must be a mapping"),
    ("seed.x=1", "seed is not a section"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        parse_config({"seed": 1}, "test", [override])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", ["- a\n- b\n", "just text\n", "42\n"])
def test_a_config_that_is_not_a_mapping_fails_even_with_overrides(tmp_path, capsys, content):
    path = tmp_path / "list.yaml"
    path.write_text(content)
    assert main(["validate", str(path), "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "must be a mapping of keys" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["data.root", "data.cache_dir", "name", "train.optimizer", "data.image_size",
                                 "augmentation.enabled"])
def test_yaml_null_is_an_error_where_none_is_not_allowed(key):
    section, _, leaf = key.rpartition(".")
    raw = {section: {leaf: None}} if section else {leaf: None}
    with pytest.raises(UserError, match=re.escape(f"{key}") + ".*(null|not allowed)"):
        parse_config(raw, "test")


def test_yaml_null_means_none_only_where_the_key_accepts_it():
    cfg = parse_config({"model": {"weights": None, "backbone": "simple_cnn"}, "label": None,
                        "data": {"classes": None}}, "test")
    assert cfg.model.weights == "none" and cfg.label is None and cfg.data.classes is None
    assert parse_config({}, "test", ["model.weights=null", "model.backbone=simple_cnn"]).model.weights == "none"


def test_unsafe_yaml_tag_in_a_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.yaml"
    path.write_text("train:\n  epochs: !!python/object/apply:os.system ['touch pwned']\n")
    assert main(["validate", str(path)]) == 2
    assert "invalid YAML" in capsys.readouterr().err and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_document_themselves_and_state_only_differences(path):
    text = path.read_text()
    assert text.startswith("# "), "each config starts with a comment naming its experiment"
    assert f"braintumor train configs/{path.name}" in text.split("\n\n")[0]
    defaults = dataclasses.asdict(Config())
    for section, values in (yaml.safe_load(text) or {}).items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert value != defaults[section][key], f"{section}.{key} restates the default"
    load_config(path)


def test_fourteen_configs_including_the_studys_chosen_model_and_the_scratch_recipe():
    names = {p.name for p in CONFIGS}
    assert len(names) == 14 and {"inception_rmsprop.yaml", "quickstart.yaml", "scratch.yaml"} <= names
    cfg = load_config(Path(CONFIGS[0]).parent / "inception_rmsprop.yaml")
    assert (cfg.model.backbone, cfg.model.mode, cfg.train.optimizer, cfg.train.learning_rate) == \
        ("inceptionv3", "fine-tune", "rmsprop", 1e-5)
    assert cfg.augmentation.enabled and cfg.augmentation.mode == "offline" and cfg.augmentation.copies == 1


def test_validate_cli_accepts_all_shipped_configs(capsys):
    assert main(["validate", *map(str, CONFIGS)]) == 0
    assert capsys.readouterr().out.count("ok ") == 14


@pytest.mark.parametrize("content, key", [
    ("train:\n  learnig_rate: 0.01\n", "train.learnig_rate"),
    ("train:\n  learning_rate: -1\n", "train.learning_rate"),
    ("model:\n  backbone: alexnet\n", "model.backbone"),
])
def test_validate_cli_fails_with_exit_2_naming_the_key(tmp_path, capsys, content, key):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian: {}\n")
    with pytest.raises(UserError):
        main(["--debug", "validate", str(path)])


def test_invalid_yaml_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    assert main(["validate", str(path)]) == 2
    assert "invalid YAML at line" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_readme_documents_every_config_key():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    def keys(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]

    missing = [key for key in keys(Config()) if f"`{key}`" not in readme]
    assert not missing, f"README's config table lacks {missing}"


def test_the_old_key_train_feature_cache_is_read_as_train_prefix_cache_with_a_one_line_notice(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  feature_cache: false\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "train.feature_cache is now train.prefix_cache" in line] == [
        f"warning: {path}: train.feature_cache is now train.prefix_cache; the old name still works, but rename it"]
    assert load_config(path).train.prefix_cache is False
    assert parse_config({}, "test", ["train.feature_cache=false"]).train.prefix_cache is False
    assert parse_config({}, "test").train.prefix_cache is True


@pytest.mark.parametrize("content, overrides", [
    ("train:\n  feature_cache: false\n  prefix_cache: true\n", []),
    ("train:\n  prefix_cache: true\n", ["--set", "train.feature_cache=false"]),
])
def test_setting_both_the_old_and_the_new_key_is_a_one_line_error(tmp_path, capsys, content, overrides):
    path = tmp_path / "both.yaml"
    path.write_text(content)
    assert main(["validate", str(path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "train.feature_cache and train.prefix_cache are both set" in err and len(err.strip().splitlines()) == 1
