"""The README's out-of-distribution table for a calibrated run on the real data set (official protocol).

    python scripts/ood_table.py --run RUN_DIR        (needs scikit-image: pip install scikit-image)

The far set (images that must be flagged) is written to a temporary folder and classified by `braintumor
predict`'s own code: scikit-learn's and scikit-image's sample photographs, pydicom's CT slice as a PNG (the
decoder refuses CT, so it is windowed here), noise, blank and text images. The Testing side is the run's own
predictions.csv, split into images with a Training twin and the leak-free rest by the run's metrics.json.
Prints markdown: AUROC of the detector's score (far set against Testing), the share flagged at the run's
threshold, per far image, and per Testing class, twinned against leak-free.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score

from braintumor.apps.commands.shared import start_tensorflow
from braintumor.core.run import Run

SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "rocket", "brick", "grass",
                  "gravel", "hubble_deep_field", "immunohistochemistry", "clock", "cell", "colorwheel",
                  "page", "text")


def _ct_slice() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    low, high = np.percentile(pixels, [0.5, 99.5])
    return np.clip(255 * (pixels - low) / (high - low), 0, 255).astype(np.uint8)


def _text_page(seed: int) -> np.ndarray:
    page = Image.new("L", (512, 512), 255)
    draw = ImageDraw.Draw(page)
    words = np.random.default_rng(seed).choice(["glioma", "scan", "report", "patient", "the", "of", "MRI"], 400)
    for line in range(30):
        draw.text((10, 10 + 16 * line), " ".join(words[line * 12:(line + 1) * 12]), fill=0)
    return np.asarray(page)


def far_images() -> dict[str, np.ndarray]:
    """Images nobody would call a brain MRI slice, by name."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    sklearn_photos = load_sample_images()
    images = {f"sklearn_{Path(name).stem}": image
              for name, image in zip(sklearn_photos.filenames, sklearn_photos.images, strict=True)}
    images |= {f"skimage_{name}": getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS}
    images["ct_small"] = _ct_slice()
    images |= {f"noise_uniform_{k}": rng.integers(0, 256, (256, 256), dtype=np.uint8) for k in range(2)}
    images |= {f"noise_gaussian_{k}": np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8)
               for k in range(2)}
    images |= {f"blank_{level}": np.full((256, 256), level, np.uint8) for level in (0, 128, 255)}
    images |= {f"text_{k}": _text_page(k) for k in range(2)}
    return images


def predict_far(run: Run) -> dict[str, tuple[bool, float]]:
    from braintumor.apps.predict import predict_paths

    with tempfile.TemporaryDirectory() as folder:
        for name, image in far_images().items():
            Image.fromarray(image).convert("RGB").save(Path(folder) / f"{name}.png")
        predictions, skipped, _ = predict_paths(run, [Path(folder)], batch_size=32)
    if skipped:
        raise SystemExit(f"far images skipped: {skipped}")
    return {Path(p.file).stem: (bool(p.in_distribution), float(p.ood_score)) for p in predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a calibrated run of the official protocol")
    run = Run.completed(parser.parse_args().run, "ood_table.py")
    start_tensorflow(debug=False)
    metrics = json.loads(run.metrics.read_text())
    if "ood" not in metrics or "leak_free" not in metrics:
        raise SystemExit("the run needs a detector (braintumor calibrate) and the official protocol's leak-free part")
    twinned = set(metrics["leak_free"]["excluded_files"])
    with open(run.predictions, newline="") as handle:
        testing = [(row["file"], row["true"], row["in_distribution"] == "true", float(row["ood_score"]))
                   for row in csv.DictReader(handle)]
    far = predict_far(run)

    scores = np.array([s for *_, s in testing] + [s for _, s in far.values()])
    is_far = np.r_[np.zeros(len(testing)), np.ones(len(far))]
    flagged_far = sum(not ok for ok, _ in far.values())
    print(f"Run: {run.path}; threshold {metrics['ood']['threshold']:.3f} (95 % of validation pass)\n")
    print("| set | images | flagged | AUROC against Testing |\n|---|---|---|---|")
    print(f"| far set | {len(far)} | {flagged_far} ({flagged_far / len(far):.0%}) | "
          f"{roc_auc_score(is_far, scores):.3f} |")
    print(f"| official Testing | {len(testing)} | {sum(not ok for *_, ok, _ in testing)} | |\n")
    print("| Testing class | twinned: flagged / n | leak-free: flagged / n |\n|---|---|---|")
    for name in sorted({true for _, true, *_ in testing}):
        cells = []
        for part in (True, False):
            rows = [ok for file, true, ok, _ in testing if true == name and (file in twinned) == part]
            share = f" ({1 - np.mean(rows):.0%})" if rows else ""
            cells.append(f"{sum(not ok for ok in rows)} / {len(rows)}{share}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print("\n| far image | flagged | score |\n|---|---|---|")
    for name, (ok, score) in sorted(far.items(), key=lambda item: item[1][1]):
        print(f"| {name} | {'yes' if not ok else '**no**'} | {score:.2f} |")


if __name__ == "__main__":
    main()
