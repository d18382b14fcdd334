"""Config schema: defaults, strict keys and values, overrides, the shipped config files."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import tracemalloc
from pathlib import Path

import pytest
import yaml

from braintumor.cli import main
from braintumor.core.config import Config, load_config, parse_config, read_listing, shipped_configs
from braintumor.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# experiment configs; a sweep listing (configs/study.yaml) names some of them and is tested in test_sweep.py
CONFIGS = sorted(path for path in (ROOT / "configs").glob("*.yaml") if read_listing(path) is None)


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
    ({"data": {"preprocess": ["standardize", "equalize"]}}, "standardize or equalize, not both"),
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


def test_validate_checks_every_file_in_configs_and_the_configs_a_listing_names(capsys, monkeypatch):
    """`braintumor validate configs/*.yaml` as typed in the clone: a sweep listing is checked by checking each
    config it names, one line each, indented under the listing."""
    monkeypatch.chdir(ROOT)
    files = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "configs").glob("*.yaml"))
    assert main(["validate", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    named = [f"configs/{path.name}" for path in read_listing(ROOT / "configs" / "study.yaml")]
    start = lines.index(f"sweep listing configs/study.yaml: {len(named)} configs")
    under = lines[start + 1:start + 1 + len(named)]
    assert [line.split()[:2] for line in under] == [["ok", name] for name in named]
    assert all(line.startswith("  ok  ") for line in under)
    rest = lines[:start] + lines[start + 1 + len(named):]
    assert [line.split()[:2] for line in rest] == [["ok", name] for name in files if name != "configs/study.yaml"]


def test_a_bare_name_is_a_shipped_config_and_a_path_that_exists_wins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here, as outside a clone
    assert set(shipped_configs()) == {path.stem for path in (ROOT / "configs").glob("*.yaml")}
    assert main(["validate", "scratch", "quickstart.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ok  {shipped_configs()['scratch']}  (scratch: simple_cnn, full")
    assert out[1].startswith(f"ok  {shipped_configs()['quickstart']}  (quickstart: simple_cnn, full")
    (tmp_path / "quickstart.yaml").write_text("model: {backbone: vgg16}\n")
    assert main(["validate", "quickstart.yaml"]) == 0
    assert capsys.readouterr().out.startswith("ok  quickstart.yaml  (quickstart: vgg16")
    assert main(["validate", "quickstrat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config quickstrat not found;") and "quickstart, resnet50_adam" in err
    assert len(err.splitlines()) == 1


def test_train_and_sweep_take_a_shipped_config_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "quickstart", "--set", "train.epoch=3"]) == 2  # the config is read, before TensorFlow
    assert f"error: {shipped_configs()['quickstart']}: unknown key 'train.epoch'" in capsys.readouterr().err
    assert main(["sweep", "study", "--dry-run", "--set", f"output.dir={tmp_path}"]) == 0
    manifest = json.loads(next(tmp_path.glob("sweep-study-*/manifest.json")).read_text())
    assert [Path(run["config"]) for run in manifest["runs"]] == read_listing(shipped_configs()["study"])


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
    readme = (ROOT / "README.md").read_text()

    def keys(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]

    missing = [key for key in keys(Config()) if f"`{key}`" not in readme]
    assert not missing, f"README's config table lacks {missing}"


def alias_bomb(levels: int = 9, flow: bool = False) -> str:
    """'Billion laughs': each anchor lists the one before nine times, so the last stands for 9**levels strings."""
    names = "abcdefghij"[:levels]
    anchors = ["&a [" + ", ".join(["lol"] * 9) + "]"] + [
        f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]" for previous, name in itertools.pairwise(names)]
    if flow:
        return "[" + ", ".join(anchors) + "]"
    return "".join(f"k{i}: {anchor}\n" for i, anchor in enumerate(anchors)) + f"data:\n  classes: *{names[-1]}\n"


HOSTILE_FILES = {
    "alias bomb": (lambda: alias_bomb(), "YAML aliases at line 6 expand to more than 100000 values"),
    "alias inside its own anchor": (lambda: "data:\n  classes: &a [x, *a]\n", "YAML alias inside its own anchor"),
    "10000-deep list": (lambda: "data:\n  classes: " + "[" * 10_000 + "]" * 10_000 + "\n",
                        "YAML nested deeper than 32 levels at line 2"),
    "10000-deep mapping": (lambda: "train: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n",
                           "YAML nested deeper than 32 levels at line 1"),
    "10 MB file": (lambda: "# " + "x" * 10 * 2**20 + "\n", "the file has 10485763 bytes, over the 65536"),
}


def peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_hostile_config_files_fail_in_one_line_before_python_objects_are_built(tmp_path, capsys, command, name):
    content, message = HOSTILE_FILES[name]
    path = tmp_path / "hostile.yaml"
    path.write_text(content())
    codes = []
    peak = peak_bytes(lambda: codes.append(main([command, str(path)])))
    err = capsys.readouterr().err
    assert codes == [2] and err.startswith(f"error: {path}: ") and message in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400
    assert peak < 4 * 2**20  # the 10 MB file is never read, the bomb never expanded


@pytest.mark.parametrize("value, message", [
    (alias_bomb(7, flow=True), "YAML aliases at line 1 expand to more than 100000 values"),
    ("[" * 10_000 + "]" * 10_000, "YAML nested deeper than 32 levels at line 1"),
    ("x" * 10 * 2**20, "its value has 10485760 characters, over the 65536"),
])
def test_hostile_set_values_fail_in_one_line(capsys, value, message):
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    argv, codes = ["validate", str(quickstart), "--set", f"data.classes={value}"], []
    peak = peak_bytes(lambda: codes.append(main(argv)))
    err = capsys.readouterr().err
    assert codes == [2] and err.startswith("error: --set 'data.classes=") and message in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400
    assert peak < 4 * 2**20 + len(value)  # at most one copy of the value, never parsed


@pytest.mark.parametrize("raw, overrides", [
    ({"model": {"backbone": "x" * 50_000}}, []),  # a Literal
    ({"data": {"image_size": "9" * 50_000 + "x"}}, []),  # a type
    ({"augmentation": {"brightness": list(range(50_000))}}, []),  # a range check
    ({"data": {"classes": "x" * 50_000}}, []),  # a list
    ({"model": "x" * 50_000}, []),  # a section
    ({"x" * 50_000: 1}, []),  # an unknown key
    ({}, ["train.epochs=[" + "1, " * 20_000]),  # an override that is not YAML
    ({}, ["x" * 50_000]),  # an override without '='
])
def test_errors_quote_long_values_cut_short(raw, overrides):
    with pytest.raises(UserError) as err:
        parse_config(raw, "test", overrides)
    assert len(str(err.value)) < 400 and "..." in str(err.value)


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
