"""Audit on a small synthetic tree with planted duplicates, a label conflict, problem files and a shift."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from braintumor.core.errors import UserError
from braintumor.data.audit import run_audit
from braintumor.data.files import scan_tree
from braintumor.data.synth import make_dataset
from braintumor.data.twins import find_test_twins

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/brain-tumor-mri"


def _save_variant(src: Path, dest: Path, quality: int = 85, brightness: float = 1.0, scale: float = 1.0) -> None:
    with Image.open(src) as image:
        image = ImageEnhance.Brightness(image.convert("RGB")).enhance(brightness)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        image.save(dest, quality=quality)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    root = make_dataset(tmp_path_factory.mktemp("audit") / "data", train_per_class=8, test_per_class=4, size=96)
    train, test = root / "Training", root / "Testing"
    for path in sorted((train / "glioma_tumor").iterdir()):  # a file-name prefix that gives the class away
        path.rename(path.with_name(path.name.replace("synth", "gg")))
    shutil.copy(train / "glioma_tumor/gg_0000.jpg", test / "glioma_tumor/exact.jpg")
    _save_variant(train / "pituitary_tumor/synth_0001.jpg", test / "pituitary_tumor/requality.jpg", quality=50)
    _save_variant(train / "meningioma_tumor/synth_0002.jpg", test / "glioma_tumor/conflict.jpg",
                  brightness=1.15, scale=0.8)
    _save_variant(train / "no_tumor/synth_0003.jpg", train / "no_tumor/bigger.jpg", scale=1.5)
    (train / "no_tumor/notes.txt").write_text("not an image")
    data = (test / "no_tumor/synth_0000.jpg").read_bytes()
    (test / "no_tumor/broken.jpg").write_bytes(data[: len(data) // 2])
    for path in (test / "meningioma_tumor").glob("synth_*.jpg"):  # a shifted class: much brighter scans
        with Image.open(path) as image:
            bright = np.clip(np.asarray(image, dtype=np.float32) * 1.8, 0, 255).astype(np.uint8)
        Image.fromarray(bright).save(path, quality=92)
    out = root.parent / "audit-out"
    return root, run_audit(root, out_dir=out), out


def test_writes_outputs_and_nothing_partial(audited: tuple[Path, dict, Path]) -> None:
    _, report, out = audited
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "audit.md", "example_pairs.png"]
    assert json.loads((out / "audit.json").read_text())["counts"] == report["counts"]
    assert not list(out.parent.glob("*.partial-*"))
    assert "Label conflicts (1 pairs)" in (out / "audit.md").read_text()


def test_finds_planted_duplicates_only(audited: tuple[Path, dict, Path]) -> None:
    _, report, _ = audited
    found = {(p["kind"], p["where"], p["a"], p["b"]) for p in report["pairs"]}
    assert found == {
        ("exact", "across", "Testing/glioma_tumor/exact.jpg", "Training/glioma_tumor/gg_0000.jpg"),
        ("near", "across", "Testing/pituitary_tumor/requality.jpg", "Training/pituitary_tumor/synth_0001.jpg"),
        ("near", "across", "Testing/glioma_tumor/conflict.jpg", "Training/meningioma_tumor/synth_0002.jpg"),
        ("near", "Training", "Training/no_tumor/bigger.jpg", "Training/no_tumor/synth_0003.jpg"),
    }
    assert report["exact_duplicates"]["across"] == {"pairs": 1, "files": 2}
    assert report["near_duplicates"]["across"]["pairs"] == 2
    assert report["testing_files_with_training_twin"] == 3


def test_label_conflict_listed_by_file(audited: tuple[Path, dict, Path]) -> None:
    _, report, _ = audited
    assert [(p["a"], p["class_a"], p["b"], p["class_b"]) for p in report["label_conflicts"]] == [
        ("Testing/glioma_tumor/conflict.jpg", "glioma_tumor",
         "Training/meningioma_tumor/synth_0002.jpg", "meningioma_tumor")]


def test_problem_files(audited: tuple[Path, dict, Path]) -> None:
    _, report, _ = audited
    problems = report["problem_files"]
    assert problems["non_image"] == ["Training/no_tumor/notes.txt"]
    assert [entry.split(":")[0] for entry in problems["truncated"]] == ["Testing/no_tumor/broken.jpg"]
    assert report["counts"]["Testing"]["no_tumor"] == 5  # still counted as an image file


def test_brightened_class_shifts_most(audited: tuple[Path, dict, Path]) -> None:
    _, report, _ = audited
    shift = report["shift"]
    assert shift[0]["class"] == "meningioma_tumor"
    assert shift[0]["features"]["brightness"] > 2 * max(row["features"]["brightness"] for row in shift[1:])


def test_prefix_that_gives_class_away(audited: tuple[Path, dict, Path]) -> None:
    _, report, _ = audited
    training = report["filename_prefixes"]["Training"]
    away = [(r["prefix"], r["class"]) for r in training["prefixes"] if r["gives_away"]]
    assert away == [("gg", "glioma_tumor")]
    assert not any(r["gives_away"] for r in report["filename_prefixes"]["Testing"]["prefixes"])


def test_find_test_twins_and_cache(audited: tuple[Path, dict, Path], tmp_path: Path) -> None:
    root, _, _ = audited
    images, _ = scan_tree(root)
    train = [i.path for i in images if i.split == "Training"]
    test = [i.path for i in images if i.split == "Testing"]
    expected = {
        root / "Testing/glioma_tumor/exact.jpg": [root / "Training/glioma_tumor/gg_0000.jpg"],
        root / "Testing/pituitary_tumor/requality.jpg": [root / "Training/pituitary_tumor/synth_0001.jpg"],
        root / "Testing/glioma_tumor/conflict.jpg": [root / "Training/meningioma_tumor/synth_0002.jpg"],
    }
    assert find_test_twins(train, test) == expected
    assert find_test_twins(train, test, cache_dir=tmp_path) == expected
    assert (tmp_path / "signatures.npz").is_file()
    assert find_test_twins(train, test, cache_dir=tmp_path) == expected  # served from the cache

    changed = tmp_path / "changed"
    shutil.copytree(root, changed)
    shutil.copy(changed / "Testing/no_tumor/synth_0001.jpg", changed / "Testing/glioma_tumor/exact.jpg")
    images, _ = scan_tree(changed)
    twins = find_test_twins([i.path for i in images if i.split == "Training"],
                            [i.path for i in images if i.split == "Testing"], cache_dir=tmp_path)
    assert changed / "Testing/glioma_tumor/exact.jpg" not in twins
    assert len(twins) == 2


def test_missing_root_or_split(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="braintumor data download"):
        run_audit(tmp_path / "nowhere", out_dir=tmp_path / "out")
    (tmp_path / "data/Training/glioma_tumor").mkdir(parents=True)
    with pytest.raises(UserError, match="no Testing folder"):
        run_audit(tmp_path / "data", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_out_dir(audited: tuple[Path, dict, Path]) -> None:
    root, _, out = audited
    with pytest.raises(UserError, match="not empty"):
        run_audit(root, out_dir=out)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real data set not at ../shared/data/brain-tumor-mri")
def test_real_data_audit(tmp_path: Path) -> None:
    report = run_audit(REAL_DATA, out_dir=tmp_path / "audit")
    assert sum(report["counts"]["Training"].values()) == 2870
    assert report["exact_duplicates"]["across"]["pairs"] == 143
    assert report["testing_files_with_training_twin"] > 200
    conflicts = {(p["a"], p["b"]) for p in report["label_conflicts"]}
    assert ("Testing/glioma_tumor/image(98).jpg", "Training/meningioma_tumor/m1(120).jpg") in conflicts


def test_class_and_file_names_with_pipes_keep_the_markdown_tables_whole(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", train_per_class=3, test_per_class=2, size=48)
    for split in ("Training", "Testing"):
        (root / split / "no_tumor").rename(root / split / "no|tumor")
    shutil.copy(root / "Training/no|tumor/synth_0000.jpg", root / "Testing/glioma_tumor/a|b.jpg")  # a conflict
    run_audit(root, out_dir=tmp_path / "audit")
    text = (tmp_path / "audit/audit.md").read_text()
    assert "no\\|tumor" in text and "a\\|b.jpg" in text
    for table in re.findall(r"(?:^\|.*\n)+", text, flags=re.MULTILINE):
        assert len({len(re.split(r"(?<!\\)\|", line)) for line in table.splitlines()}) == 1, table
