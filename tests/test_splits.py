"""Twin groups and split protocols: planted exact / near twins and a label conflict on the synthetic data set,
the split file (`braintumor data split`, a run's split.csv, data.split_file), the new config keys, and on the real
data set no twin pair across the sides of `clean` or of any `kfold` fold."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA, needs_real_data
from PIL import Image

from braintumor.cli import main
from braintumor.core.config import parse_config
from braintumor.core.errors import UserError
from braintumor.data import splits
from braintumor.data.dataset import load_dataset
from braintumor.data.files import scan_tree
from braintumor.data.groups import find_groups
from braintumor.data.synth import make_dataset
from braintumor.data.twins import compute_signatures, match_pairs


def near_copy(source: Path, dest: Path, size: int = 110) -> None:
    """Re-sized and re-encoded: a near twin, not the same bytes."""
    with Image.open(source) as image:
        image.convert("L").resize((size, size), Image.Resampling.BILINEAR).save(dest, quality=80)


@pytest.fixture(scope="module")
def twin_root(tmp_path_factory) -> Path:
    """The synthetic set plus planted twins: an exact copy across the splits, a near pair inside Training, a chain of
    three across the splits (near, then exact), and a label conflict (a pituitary image filed as glioma)."""
    root = make_dataset(tmp_path_factory.mktemp("twins") / "data", train_per_class=16, test_per_class=6, size=96,
                        seed=3)
    train, test = root / "Training", root / "Testing"
    shutil.copy(train / "glioma_tumor/synth_0000.jpg", test / "glioma_tumor/exact.jpg")
    near_copy(train / "meningioma_tumor/synth_0001.jpg", train / "meningioma_tumor/near.jpg")
    near_copy(train / "no_tumor/synth_0002.jpg", test / "no_tumor/chain.jpg")
    shutil.copy(test / "no_tumor/chain.jpg", train / "no_tumor/chain_copy.jpg")
    shutil.copy(train / "pituitary_tumor/synth_0003.jpg", test / "glioma_tumor/conflict.jpg")
    return root


def twin_pairs(root: Path, cache_dir: Path | None = None) -> list[tuple[str, str]]:
    """Every exact or near twin pair under root, by the audit's matcher, as relative files."""
    images, _ = scan_tree(root)
    sigs = compute_signatures([image.path for image in images], cache_dir)
    every = np.arange(len(images))
    files = [image.path.relative_to(root).as_posix() for image in images]
    return [(files[i], files[j]) for i, j, *_ in match_pairs(sigs, every, every, within=True)]


def sides_of(csv_text: str) -> dict[str, dict]:
    return {row["file"]: row for row in csv.DictReader(io.StringIO(csv_text))}


def crossing(pairs: list[tuple[str, str]], side: dict[str, str]) -> list[tuple[str, str]]:
    """Twin pairs whose two images sit on different sides (excluded images count on no side)."""
    return [(a, b) for a, b in pairs if side[a] != side[b] and splits.EXCLUDED not in (side[a], side[b])]


def test_groups_join_planted_twins_whatever_the_order(twin_root: Path) -> None:
    images, _ = scan_tree(twin_root)
    groups = find_groups(images, twin_root)
    again = find_groups(list(reversed(images)), twin_root)
    assert again.files == groups.files and (again.group == groups.group).all()
    group = dict(zip(groups.files, groups.group.tolist(), strict=True))
    assert group["Training/glioma_tumor/synth_0000.jpg"] == group["Testing/glioma_tumor/exact.jpg"]
    assert group["Training/meningioma_tumor/synth_0001.jpg"] == group["Training/meningioma_tumor/near.jpg"]
    chain = {group[f] for f in ("Training/no_tumor/synth_0002.jpg", "Testing/no_tumor/chain.jpg",
                                "Training/no_tumor/chain_copy.jpg")}
    assert len(chain) == 1
    summary = groups.summary()
    assert summary["multi_image_groups"] == 4 and summary["size_distribution"] == {"1": 84, "2": 3, "3": 1}
    assert summary["spanning_splits"] == 3
    (conflict,) = summary["label_conflicts"]
    assert conflict["classes"] == ["glioma_tumor", "pituitary_tumor"]
    assert conflict["files"] == ["Testing/glioma_tumor/conflict.jpg", "Training/pituitary_tumor/synth_0003.jpg"]


def test_audit_reports_the_groups(twin_root: Path, tmp_path: Path) -> None:
    from braintumor.data.audit import run_audit

    report = run_audit(twin_root, tmp_path / "audit")
    assert report["twin_groups"]["groups"] == 88 and len(report["twin_groups"]["label_conflicts"]) == 1
    assert "## Twin groups" in (tmp_path / "audit" / "audit.md").read_text()


@pytest.mark.parametrize("protocol", ["clean", "kfold"])
def test_split_file_is_identical_across_listing_orders(twin_root: Path, tmp_path: Path, monkeypatch,
                                                       protocol: str) -> None:
    """Acceptance 5: a copy of the data set whose files were created in another order, listed shuffled, gives the
    same split file byte for byte."""
    copy = tmp_path / "copy"
    files = sorted(p for p in twin_root.rglob("*") if p.is_file())
    for path in reversed(files):  # another creation order (and other inode / mtime order)
        (copy / path.relative_to(twin_root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy / path.relative_to(twin_root))
    args = ["--protocol", protocol, "--folds", "3", "--seed", "7", "--cache-dir", str(tmp_path / "cache")]
    assert main(["data", "split", str(twin_root), *args, "--out", str(tmp_path / "a.csv")]) == 0

    def shuffled_scan(root: Path):
        images, others = scan_tree(root)
        random.Random(1).shuffle(images)
        return images, others

    monkeypatch.setattr(splits, "scan_tree", shuffled_scan)
    assert main(["data", "split", str(copy), *args, "--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert list(rows[0]) == list(splits.COLUMNS) and len(rows) == 93
    conflict = [row for row in rows if row["split"] == splits.EXCLUDED]
    assert [row["file"] for row in conflict] == ["Testing/glioma_tumor/conflict.jpg",
                                                 "Training/pituitary_tumor/synth_0003.jpg"]
    assert all(row["reason"].startswith("label conflict: twin group") for row in conflict)


def test_split_refuses_to_overwrite_and_bad_folds(twin_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "taken.csv"
    out.write_text("keep me")
    assert main(["data", "split", str(twin_root), "--protocol", "clean", "--out", str(out)]) == 2
    assert main(["data", "split", str(twin_root), "--protocol", "kfold", "--folds", "21",
                 "--out", str(tmp_path / "new.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "exists; choose a new --out file" in err[0] and "--folds 21" in err[1]
    assert out.read_text() == "keep me" and not (tmp_path / "new.csv").exists()


@pytest.mark.parametrize("seed", [0, 1])
def test_no_twin_pair_across_sides_clean_and_every_fold(twin_root: Path, seed: int) -> None:
    images, _ = scan_tree(twin_root)
    groups = find_groups(images, twin_root)
    pairs = twin_pairs(twin_root)
    clean = splits.clean_split(groups, 0.2, seed)
    side = dict(zip(groups.files, clean.split, strict=True))
    assert crossing(pairs, side) == []
    counts = clean.counts()
    assert set(counts["test"]) == set(counts["train"]) == {"glioma_tumor", "meningioma_tumor", "no_tumor",
                                                            "pituitary_tumor"}
    kfold = splits.kfold_split(groups, 3, seed)
    assert sorted(set(kfold.split)) == ["0", "1", "2", splits.EXCLUDED]
    assert crossing(pairs, dict(zip(groups.files, kfold.split, strict=True))) == []


def tiny_config(root: Path, tmp_path: Path, **data):
    return parse_config({"seed": 0, "data": {"root": str(root), "image_size": 32, "val_fraction": 0.25,
                                             "cache_dir": str(tmp_path / "cache"), **data},
                         "model": {"backbone": "simple_cnn", "weights": "none", "mode": "full"}}, "test")


@pytest.mark.parametrize("data", [{}, {"protocol": "clean"}, {"protocol": "kfold", "folds": 3, "fold": 2}],
                         ids=["official", "clean", "kfold"])
def test_validation_has_no_twin_in_training_in_every_protocol(twin_root: Path, tmp_path: Path, data: dict) -> None:
    dataset = load_dataset(tiny_config(twin_root, tmp_path, **data))
    side = sides_of(dataset.split_csv)
    assert {row["split"] for row in side.values()} >= {"train", "validation", "test"}
    for name, part in (("train", dataset.train), ("validation", dataset.val), ("test", dataset.test)):
        assert sorted(part.files) == sorted(f for f, row in side.items() if row["split"] == name)
    pairs = twin_pairs(twin_root)
    val_train = [(a, b) for a, b in pairs if {side[a]["split"], side[b]["split"]} == {"train", "validation"}]
    assert val_train == []
    protocol = data.get("protocol", "official")
    assert dataset.summary()["protocol"]["name"] == protocol
    if protocol == "official":  # the published folders, conflicts and cross-split twins included
        assert sorted(dataset.test.files) == sorted(f for f in side if f.startswith("Testing/"))
    else:
        assert crossing(pairs, {f: row["split"] for f, row in side.items()}) == []
        assert side["Testing/glioma_tumor/conflict.jpg"]["split"] == splits.EXCLUDED


@pytest.mark.parametrize(("override", "fragment"), [
    ("data.protocol=random", "data.protocol = 'random' is not allowed; use one of: official, clean, kfold"),
    ("data.test_fraction=0.5", "data.test_fraction = 0.5 is not allowed"),
    ("data.folds=1", "data.folds = 1 is not allowed; use an integer from 2 to 20"),
    ("data.folds=21", "data.folds = 21 is not allowed"),
    ("data.fold=5", "data.fold = 5 is not allowed; use an integer from 0 to 4"),
    ("data.fold=-1", "data.fold = -1 is not allowed"),
    ("data.split_file=[a]", "data.split_file = ['a'] must be of type str"),
])
def test_bad_values_of_the_new_keys_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(UserError, match=re_escape(fragment)):
        parse_config({}, "cfg.yaml", [override])
    with pytest.raises(UserError, match="data.exclude_test_twins = True is not allowed"):
        parse_config({}, "cfg.yaml", ["data.protocol=clean", "data.exclude_test_twins=true"])


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_split_file_wins_and_a_changed_image_is_one_line(twin_root: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(twin_root, root)
    split_file = tmp_path / "split.csv"
    assert main(["data", "split", str(root), "--protocol", "kfold", "--folds", "3", "--seed", "0",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(split_file)]) == 0
    written = sides_of(split_file.read_text())
    dataset = load_dataset(tiny_config(root, tmp_path, split_file=str(split_file), fold=1))
    assert sorted(dataset.test.files) == sorted(f for f, row in written.items() if row["split"] == "1")
    assert dataset.protocol["name"] == "split_file" and dataset.protocol["folds"] == 3
    changed = root / "Training/no_tumor/synth_0005.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"seed": 0, "data": {"root": str(root), "image_size": 32,
                                                      "split_file": str(split_file),
                                                      "cache_dir": str(tmp_path / "cache")},
                                  "model": {"backbone": "simple_cnn", "weights": "none", "mode": "full"},
                                  "output": {"dir": str(tmp_path / "outputs")}}))
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # no progress bars
    assert len(err) == 1 and "synth_0005.jpg no longer matches its sha256" in err[0]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


@pytest.mark.slow
@pytest.mark.realdata
@needs_real_data
def test_real_data_clean_and_every_fold_have_no_twin_across_sides(tmp_path: Path) -> None:
    """Acceptance 1, with the audit's matcher: seed 0, clean and the five kfold folds."""
    images, _ = scan_tree(REAL_DATA)
    groups = find_groups(images, REAL_DATA, tmp_path)
    pairs = twin_pairs(REAL_DATA, tmp_path)  # each image is read once: the pairs use the signatures groups cached
    summary = groups.summary()
    print(f"\ngroups {summary['groups']}, multi-image {summary['multi_image_groups']}, spanning both splits "
          f"{summary['spanning_splits']}, label conflicts {len(summary['label_conflicts'])}")
    clean = splits.clean_split(groups, 0.2, 0)
    assert crossing(pairs, dict(zip(groups.files, clean.split, strict=True))) == []
    print("clean", clean.counts())
    kfold = splits.kfold_split(groups, 5, 0)
    for fold in range(5):
        side = {f: ("test" if s == str(fold) else s if s == splits.EXCLUDED else "train")
                for f, s in zip(groups.files, kfold.split, strict=True)}
        assert crossing(pairs, side) == []
    print("kfold", kfold.counts())
    assert all(len(labels) == 4 for side, labels in kfold.counts().items() if side != splits.EXCLUDED)
    # acceptance 2: the official protocol's validation part (data.val_fraction 0.1) has no twin in the training part
    official = splits.official_split(groups, "Training")
    for seed in (0, 1, 2):
        carved = splits.Assignment(groups, list(official.split), list(official.reason))
        splits.carve_validation(carved, 0.1, seed)
        side = dict(zip(groups.files, carved.split, strict=True))
        assert [(a, b) for a, b in pairs if {side[a], side[b]} == {"train", "validation"}] == []
        print(f"official seed {seed}: {carved.split.count('validation')} validation images, none with a training twin")


@pytest.mark.slow
def test_sweep_folds_trains_every_fold_and_compare_pools_them(twin_root: Path, tmp_path: Path) -> None:
    """Acceptance 3 at tiny size: `sweep configs/quickstart.yaml --folds 3`, then compare pools the three folds."""
    from braintumor.apps import sweep

    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    outputs = tmp_path / "outputs"
    assert main(["sweep", str(quickstart), "--folds", "3", "--jobs", "2", "--set", f"data.root={twin_root}",
                 "--set", "data.image_size=32", "--set", "train.epochs=1", "--set", f"output.dir={outputs}",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    (sweep_dir,) = outputs.glob("sweep-*")
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert manifest["folds"] == 3 and [run["fold"] for run in manifest["runs"]] == [0, 1, 2]
    tested = []
    for run in sweep.read_manifest(sweep_dir):
        folder = run.run_in(sweep_dir)
        assert folder.state() == "completed" and run.id == f"quickstart-f{run.fold}-s42"
        data = json.loads(folder.data.read_text())
        assert data["protocol"] == {"name": "kfold", "folds": 3, "fold": run.fold, "seed": 42, "groups": 88}
        metrics = json.loads(folder.metrics.read_text())
        assert metrics["protocol"] == "kfold" and "leak_free" not in metrics  # grouped: the metrics are leak-free
        by_folder = metrics["by_folder"]  # the fold's images from each published folder (source), apart
        assert sorted(by_folder) == ["Testing", "Training"]
        assert sum(part["n"] for part in by_folder.values()) == metrics["n"]
        assert sum(part["accuracy"] * part["n"] for part in by_folder.values()) == pytest.approx(
            metrics["accuracy"] * metrics["n"])
        assert "The images from Testing/" in folder.classification_report.read_text()
        side = sides_of(folder.split.read_text())
        tested.append({f for f, row in side.items() if row["split"] == "test"})
        assert tested[-1] == {row["file"] for row in csv.DictReader(folder.predictions.open())}
    assert not tested[0] & tested[1] and not tested[1] & tested[2] and sum(map(len, tested)) == 91  # 93 - conflict

    # evaluate scores a fold's own test part by default and refuses an official folder it partly trained on
    assert main(["evaluate", "--run", str(folder.path), "--out", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (again["n"], again["accuracy"]) == (metrics["n"], pytest.approx(metrics["accuracy"]))
    assert main(["evaluate", "--run", str(folder.path), "--split", "Testing"]) == 2
    # so does export's check of the converted model: not the Testing folder the fold partly trained on
    assert main(["export", "--run", str(folder.path), "--format", "savedmodel", "--out", str(tmp_path / "exp")]) == 0
    check = json.loads((tmp_path / "exp" / "savedmodel" / "model_card.json").read_text())["check"]
    assert (check["split"], check["images"]) == ("test", metrics["n"])
    assert check["model_keras_accuracy"] == pytest.approx(metrics["accuracy"])

    out = tmp_path / "cmp"
    assert main(["compare", str(sweep_dir), "--out", str(out)]) == 0
    (row,) = list(csv.DictReader((out / "configurations.csv").open()))
    assert (row["runs"], row["protocol"], row["group"].split()[0]) == ("3", "kfold", "CV3")
    accuracies = [float(r["accuracy"]) for r in csv.DictReader((out / "summary.csv").open())]
    assert len(accuracies) == 3 and float(row["accuracy_mean"]) == pytest.approx(np.mean(accuracies))
    assert float(row["accuracy_std"]) == pytest.approx(np.std(accuracies, ddof=1))
