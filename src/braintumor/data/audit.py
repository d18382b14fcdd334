"""Data set audit: exact and near duplicates within and across splits, label conflicts,
Training/Testing shift per class, and file names that give the class away.

Near duplicates are found in two steps. A 64-bit DCT perceptual hash proposes candidate pairs;
a pixel-level correlation confirms them. Both work on a *brain-normalised* thumbnail: the
image's intensity-weighted centroid and spread (background subtracted) define a box of
centroid +/- 1.4 standard deviations, resampled to 64x64. Because that box comes from moments
rather than from the frame, black padding, re-cropping, resizing, annotations and brightness
changes hardly move it. A plain frame hash on dark-background MRI scores every centred brain
alike.

Thresholds, checked on the real data set (3264 images, 5.3 M pairs): the hash proposes pairs
within HAMMING_MAX bits (0.06 % of all pairs; most are unrelated scans with the same layout);
the correlation of the 64x64 thumbnails then has a gap between 0.88 and 0.92. Re-encoded,
resized, re-cropped, padded or annotated copies of one image score >= 0.92; adjacent slices
of one series score <= 0.90. No confirmed pair is further apart than 6 bits, so HAMMING_MAX
leaves room.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import wasserstein_distance

from braintumor.core.atomic import write_json, write_text
from braintumor.core.errors import UserError
from braintumor.core.logs import get_logger
from braintumor.core.rundir import staged_dir
from braintumor.data import medical
from braintumor.data.files import READABLE, SPLITS, ImageFile, is_scan, scan_tree
from braintumor.data.groups import groups_from_pairs
from braintumor.data.twins import (
    CORRELATION_MIN,
    DARK_LEVEL,
    DECODE_SIZE,
    HAMMING_MAX,
    Signatures,
    compute_signatures,
    match_pairs,
)
from braintumor.results.cells import md_cell as md

log = get_logger(__name__)
SHIFT_FEATURES = ("brightness", "contrast", "dark_fraction", "side_px", "aspect")
FIGURE_NAME = "example_pairs.png"


# ---------------------------------------------------------------- report sections

def _mean_std(values: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)} if len(values) else {}


def _groups(images: list[ImageFile]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[image.split, image.label].append(i)
    return groups


def _image_stats(images: list[ImageFile], sigs: Signatures) -> dict:
    stats: dict = defaultdict(dict)
    for (split, label), members in _groups(images).items():
        idx = np.array([i for i in members if sigs.error[i] == ""], int)
        sizes = Counter(f"{w}x{h}" for w, h in sigs.size[idx])
        stats[split][label] = {
            "n": len(members),
            "sizes_top5": dict(sizes.most_common(5)),
            "distinct_sizes": len(sizes),
            "modes": dict(Counter(sigs.mode[idx].tolist())),
            "brightness": _mean_std(sigs.stats[idx, 0]),
            "contrast": _mean_std(sigs.stats[idx, 1]),
            "dark_fraction": _mean_std(sigs.stats[idx, 2]),
        }
    return dict(stats)


def _shift(images: list[ImageFile], sigs: Signatures) -> list[dict]:
    """Per class: 1-D Wasserstein distance Training vs Testing per feature / pooled std, averaged."""
    width, height = sigs.size[:, 0].astype(float), np.maximum(sigs.size[:, 1], 1).astype(float)
    features = np.column_stack([sigs.stats, np.sqrt(width * height), width / height])
    groups = _groups(images)
    result = []
    for label in sorted({image.label for image in images}):
        train, test = ([i for i in groups.get((split, label), []) if sigs.error[i] == ""] for split in SPLITS)
        if not train or not test:
            continue
        scores = {}
        for k, name in enumerate(SHIFT_FEATURES):
            pooled = features[train + test, k].std()
            distance = wasserstein_distance(features[train, k], features[test, k])
            scores[name] = round(float(distance / pooled), 3) if pooled > 0 else 0.0
        result.append({"class": label, "score": round(float(np.mean(list(scores.values()))), 3),
                       "top_feature": max(scores, key=scores.get), "features": scores})
    return sorted(result, key=lambda row: -row["score"])


def _name_prefix(path: Path) -> str:
    return re.match(r"[^\W\d_]*", path.stem).group().lower()


def _prefixes(images: list[ImageFile]) -> dict:
    """Per split: each file-name prefix's majority class, precision and share of that class.

    A prefix "gives the class away" when >= 95 % of its (>= 5) files sit in one class. The rule
    "prefix -> majority class" is scored against the majority-class baseline.
    """
    result = {}
    for split in SPLITS:
        members = [image for image in images if image.split == split]
        if not members:
            continue
        by_prefix = defaultdict(Counter)
        for image in members:
            by_prefix[_name_prefix(image.path)][image.label] += 1
        class_sizes = Counter(image.label for image in members)
        rows = []
        for prefix, labels in sorted(by_prefix.items(), key=lambda item: -item[1].total()):
            label, hits = labels.most_common(1)[0]
            precision = hits / labels.total()
            rows.append({"prefix": prefix, "n": labels.total(), "class": label,
                         "precision": round(precision, 3), "share_of_class": round(hits / class_sizes[label], 3),
                         "gives_away": precision >= 0.95 and labels.total() >= 5})
        result[split] = {
            "prefixes": rows,
            "rule_accuracy": round(sum(by_prefix[p].most_common(1)[0][1] for p in by_prefix) / len(members), 3),
            "majority_baseline": round(max(class_sizes.values()) / len(members), 3),
        }
    return result


def _duplicates(images: list[ImageFile], sigs: Signatures, root: Path) -> dict:
    index = np.arange(len(images))
    found = match_pairs(sigs, index, index, within=True)
    pairs = []
    for i, j, kind, hamming, correlation in found:
        if images[i].split == "Training" and images[j].split == "Testing":
            i, j = j, i  # cross-split pairs list the Testing file first
        a, b = images[i], images[j]
        pairs.append({"where": a.split if a.split == b.split else "across", "kind": kind,
                      "a": a.path.relative_to(root).as_posix(), "b": b.path.relative_to(root).as_posix(),
                      "class_a": a.label, "class_b": b.label, "hamming": hamming,
                      "correlation": round(correlation, 4)})

    def counts(kind: str) -> dict:
        out = {}
        for where in (*SPLITS, "across"):
            chosen = [p for p in pairs if p["kind"] == kind and p["where"] == where]
            out[where] = {"pairs": len(chosen), "files": len({f for p in chosen for f in (p["a"], p["b"])})}
        return out

    groups = defaultdict(list)
    for image, digest in zip(images, sigs.sha256, strict=True):
        groups[digest].append(image.path.relative_to(root).as_posix())
    across = [p for p in pairs if p["where"] == "across"]
    return {
        "exact_duplicates": {**counts("exact"), "groups": [g for g in groups.values() if len(g) > 1]},
        "near_duplicates": {**counts("near"), "hamming_max": HAMMING_MAX, "correlation_min": CORRELATION_MIN},
        "label_conflicts": [p for p in pairs if p["class_a"] != p["class_b"]],
        "testing_files_with_training_twin": len({p["a"] for p in across}),
        "training_files_with_testing_twin": len({p["b"] for p in across}),
        "twin_groups": groups_from_pairs(images, root, sigs.sha256, found).summary(),
        "pairs": pairs,
    }


# ---------------------------------------------------------------- outputs

def _plot_pairs(report: dict, root: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = report["pairs"]
    examples = ([p for p in pairs if p["kind"] == "exact" and p["where"] == "across"][:3]
                # the least similar near pairs show what the threshold still admits
                + sorted((p for p in pairs if p["kind"] == "near"),
                         key=lambda p: (p["where"] != "across", p["correlation"]))[:3]
                + report["label_conflicts"][:3])
    chosen = list({(p["a"], p["b"]): p for p in examples}.values())
    if not chosen:
        fig = plt.figure(figsize=(4, 1))
        fig.text(0.5, 0.5, "no duplicate pairs found", ha="center", va="center")
    else:
        fig, axes = plt.subplots(len(chosen), 2, figsize=(6, 3 * len(chosen)), squeeze=False)
        for row, pair in zip(axes, chosen, strict=True):
            conflict = ", LABEL CONFLICT" if pair["class_a"] != pair["class_b"] else ""
            note = f"{pair['kind']} ({pair['where']}), r={pair['correlation']:.3f}, {pair['hamming']} bits{conflict}"
            for ax, key, title in zip(row, ("a", "b"), (f"{pair['a']}\n{note}", pair["b"]), strict=True):
                try:
                    if is_scan(root / pair[key]):  # DICOM or NIfTI: the slice the decoder classifies
                        scan = medical.read_scan(root / pair[key])
                        ax.imshow(scan.slices[scan.middle], cmap="gray", vmin=0, vmax=255)
                    else:
                        with Image.open(root / pair[key]) as image:
                            image.draft("L", (256, 256))
                            ax.imshow(image.convert("L"), cmap="gray")
                except (OSError, medical.ScanRefused):  # an exact copy of an unreadable file
                    ax.text(0.5, 0.5, "unreadable", ha="center")
                ax.set_title(title, fontsize=7)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _markdown(report: dict) -> str:
    lines = [f"# Data set audit: {report['root']}", "",
             f"{report['created']}, {report['seconds']} s.", "", "## Counts", "",
             "| split | " + " | ".join(map(md, report["classes"])) + " | total | imbalance (max/min) |",
             "|---" * (len(report["classes"]) + 3) + "|"]
    for split, counts in report["counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in report["classes"])
                     + f" | {sum(counts.values())} | {report['imbalance_ratio'][split]} |")
    problems = report["problem_files"]
    lines += ["", f"Non-image files: {len(problems['non_image'])}; unreadable: {len(problems['unreadable'])}; "
              f"truncated: {len(problems['truncated'])}."]
    lines += [f"- {md(entry)}" for key in ("non_image", "unreadable", "truncated") for entry in problems[key][:20]]
    lines += ["", "## Images per split and class", "",
              "| split | class | n | top sizes | distinct sizes | modes | brightness | contrast | dark fraction |",
              "|---|---|---|---|---|---|---|---|---|"]
    for split, per_class in report["images"].items():
        for label, s in per_class.items():
            sizes = ", ".join(f"{k} ({v})" for k, v in list(s["sizes_top5"].items())[:3])
            stats = [f"{s[k]['mean']:.3g} ± {s[k]['std']:.2g}" if s[k] else "-"
                     for k in ("brightness", "contrast", "dark_fraction")]
            lines.append(f"| {split} | {md(label)} | {s['n']} | {sizes} | {s['distinct_sizes']} | "
                         f"{', '.join(f'{k} ({v})' for k, v in s['modes'].items())} | " + " | ".join(stats) + " |")
    lines += ["", f"Brightness and contrast: mean and standard deviation of the gray level (0-255) of each image "
              f"(decoded at >= {DECODE_SIZE} px); dark fraction: share of pixels below {DARK_LEVEL}.", "",
              "## Training/Testing shift per class", "",
              "Per feature, the 1-D Wasserstein distance between the Training and the Testing distribution of "
              "the per-image values, divided by the feature's standard deviation over both splits (0 = same "
              "distribution; 1 = shifted by about one standard deviation). Score = mean over features "
              f"({', '.join(SHIFT_FEATURES)}; side_px = sqrt(width x height)). Classes, most shifted first:", "",
              "| class | score | most shifted feature | " + " | ".join(SHIFT_FEATURES) + " |",
              "|---" * (len(SHIFT_FEATURES) + 3) + "|"]
    for row in report["shift"]:
        lines.append(f"| {md(row['class'])} | {row['score']} | {row['top_feature']} | "
                     + " | ".join(str(row["features"][k]) for k in SHIFT_FEATURES) + " |")
    lines += ["", "## Duplicates", "",
              f"Exact: same bytes (SHA-256). Near: perceptual hash (64-bit DCT of a brain-normalised 64x64 "
              f"thumbnail) within {HAMMING_MAX} bits, confirmed by a correlation >= {CORRELATION_MIN} of the "
              "thumbnails; near pairs exclude exact ones. Counted as pairs (and distinct files in them).", "",
              "| | within Training | within Testing | across splits |", "|---|---|---|---|"]
    for key in ("exact_duplicates", "near_duplicates"):
        lines.append(f"| {key.split('_')[0]} | " + " | ".join(
            f"{report[key][w]['pairs']} ({report[key][w]['files']} files)" for w in (*SPLITS, "across")) + " |")
    lines += ["", f"Testing files with a Training twin (exact or near): {report['testing_files_with_training_twin']} "
              f"of {sum(report['counts'].get('Testing', {}).values())}; Training files with a Testing twin: "
              f"{report['training_files_with_testing_twin']}.", "",
              f"## Label conflicts ({len(report['label_conflicts'])} pairs)", "",
              "| kind | where | file | class | file | class | r |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {p['kind']} | {p['where']} | {md(p['a'])} | {md(p['class_a'])} | {md(p['b'])} | "
              f"{md(p['class_b'])} | {p['correlation']} |" for p in report["label_conflicts"]]
    twin = report["twin_groups"]
    lines += ["", "## Twin groups", "",
              "A group joins the images connected by exact or near twins (union-find over both splits); the grouped "
              "split protocols (`data.protocol: clean | kfold`, `braintumor data split`) keep each group on one side "
              "and exclude the label conflicts.", "",
              f"{twin['groups']} groups of {twin['images']} images; {twin['multi_image_groups']} hold more than one "
              f"image ({twin['images_in_multi_image_groups']} images, the largest {twin['largest']}); "
              f"{twin['spanning_splits']} span both Training and Testing; {len(twin['label_conflicts'])} carry two "
              "labels.", "", "| group size | groups |", "|---|---|"]
    lines += [f"| {size} | {count} |" for size, count in twin["size_distribution"].items()]
    lines += ["", "| conflict group | classes | files |", "|---|---|---|"]
    lines += [f"| {c['group']} | {md(', '.join(c['classes']))} | {md(', '.join(c['files']))} |"
              for c in twin["label_conflicts"]]
    lines += ["", "## File-name prefixes", "",
              "Prefix = the letters before the first digit or punctuation. A prefix gives the class away when "
              ">= 95 % of its (>= 5) files sit in one class.", ""]
    for split, found in report["filename_prefixes"].items():
        lines += [f"**{split}**: predicting the class from the prefix alone scores {found['rule_accuracy']:.1%} "
                  f"(majority-class baseline {found['majority_baseline']:.1%}).", "",
                  "| prefix | files | majority class | precision | share of class | gives away |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {md(r['prefix'] or '(none)')} | {r['n']} | {md(r['class'])} | {r['precision']} | "
                  f"{r['share_of_class']} | {'yes' if r['gives_away'] else ''} |" for r in found["prefixes"]]
        lines.append("")
    lines += [f"Example pairs: {FIGURE_NAME}. All pairs: audit.json (`pairs`).", ""]
    return "\n".join(lines)


def _log_summary(report: dict, out_dir: Path) -> None:
    counts = {split: sum(c.values()) for split, c in report["counts"].items()}
    problems = {key: len(value) for key, value in report["problem_files"].items()}
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    log.info(f"audit of {report['root']}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
          + f" images; non-image {problems['non_image']}, unreadable {problems['unreadable']}, "
          f"truncated {problems['truncated']}")
    for name, found in (("exact duplicates", exact), (f"near duplicates (r >= {CORRELATION_MIN})", near)):
        log.info(f"{name}, pairs: within Training {found['Training']['pairs']}, within Testing "
              f"{found['Testing']['pairs']}, across splits {found['across']['pairs']} "
              f"({found['across']['files']} files)")
    log.info(f"Testing files with a Training twin: {report['testing_files_with_training_twin']} of "
          f"{counts.get('Testing', 0)}")
    conflicts = report["label_conflicts"]
    log.info(f"label conflicts: {len(conflicts)} pairs"
          + "".join(f"\n  {p['a']} ({p['class_a']}) = {p['b']} ({p['class_b']})" for p in conflicts[:5])
          + ("\n  ..." if len(conflicts) > 5 else ""))
    twin = report["twin_groups"]
    log.info(f"twin groups: {twin['groups']} ({twin['multi_image_groups']} of more than one image, largest "
             f"{twin['largest']}); {twin['spanning_splits']} span both splits; {len(twin['label_conflicts'])} label "
             "conflicts (excluded by the grouped protocols)")
    log.info("shift Training->Testing (Wasserstein / std): "
          + ", ".join(f"{r['class']} {r['score']} ({r['top_feature']})" for r in report["shift"][:4]))
    for split, found in report["filename_prefixes"].items():
        away = [f"'{r['prefix'] or '(none)'}' -> {r['class']}" for r in found["prefixes"] if r["gives_away"]]
        log.info(f"file-name prefixes in {split}: {', '.join(away) or 'none give the class away'} "
              f"(prefix rule {found['rule_accuracy']:.0%} vs baseline {found['majority_baseline']:.0%})")
    log.info(f"wrote {out_dir} ({report['seconds']} s)")


def check_root(root: Path) -> None:
    """One line when ROOT is not a folder holding Training/ and Testing/."""
    if not root.is_dir():
        raise UserError(f"data root {root} not found; fetch it with `braintumor data download --dest {root}` "
                        "or pass the folder that holds Training/ and Testing/")
    missing = [split for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise UserError(f"{root} has no {' or '.join(missing)} folder; pass the folder that holds Training/ and "
                        "Testing/ (e.g. the one `braintumor data download` writes)")


def run_audit(root: Path, out_dir: Path | None = None) -> dict:
    """Audit ROOT/{Training,Testing}/<class>/*; write audit.json, audit.md and example_pairs.png."""
    started = time.perf_counter()
    root = Path(root)
    check_root(root)
    out_dir = Path(out_dir) if out_dir else Path("outputs") / f"audit-{datetime.now():%Y%m%d-%H%M%S}"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not empty; choose a new --out folder")
    images, others = scan_tree(root)
    if not images:
        raise UserError(f"no images ({READABLE}) under {root}/Training or "
                        f"{root}/Testing; pass the data set root")
    sigs = compute_signatures([image.path for image in images])
    counts = {split: {label: len(idx) for (s, label), idx in sorted(_groups(images).items()) if s == split}
              for split in SPLITS}
    errors = [(image.path.relative_to(root).as_posix(), error)
              for image, error in zip(images, sigs.error, strict=True) if error]
    report = {
        "root": str(root),
        "created": datetime.now().isoformat(timespec="seconds"),
        "classes": sorted({image.label for image in images}),
        "counts": counts,
        "imbalance_ratio": {split: round(max(c.values()) / min(c.values()), 2) if c else None
                            for split, c in counts.items()},
        "problem_files": {
            "non_image": [p.relative_to(root).as_posix() for p in others],
            "unreadable": [f"{f}: {e}" for f, e in errors if "truncated" not in e],
            "truncated": [f"{f}: {e}" for f, e in errors if "truncated" in e],
        },
        "images": _image_stats(images, sigs),
        "shift": _shift(images, sigs),
        **_duplicates(images, sigs, root),
        "filename_prefixes": _prefixes(images),
    }
    if out_dir.is_dir():  # empty, as checked above
        out_dir.rmdir()
    with staged_dir(out_dir) as tmp:
        _plot_pairs(report, root, tmp / FIGURE_NAME)
        report["seconds"] = round(time.perf_counter() - started, 1)
        write_text(tmp / "audit.md", _markdown(report))
        write_json(tmp / "audit.json", report)
    _log_summary(report, out_dir)
    return report
