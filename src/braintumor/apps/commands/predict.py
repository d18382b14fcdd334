"""`braintumor predict`: classify image files or folders with a trained run, optionally with Grad-CAM overlays."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import MAX_BATCH, add_run_dir, batch_size, start_tensorflow
from braintumor.data.medical import SLICES

# BENCHMARKS.md, "predict: peak memory against batch size" (VGG16, 224 px, 394 images, 2-core AVX2 CPU): every
# batch from 1 to 64 ran at 3.3-3.9 images/s, while the peak grew from 1031 MiB (1) to 2745 MiB (64), about 27 MB
# per image of the batch. So the default is the smallest; a GPU or an AVX-512 CPU gains from --batch-size 32 or 64.
BATCH_SIZE = 1
HELP = "classify image files or folders with a trained run (optionally Grad-CAM)"
DESCRIPTION = ("Classify images with a run's model, through the run's own decoding and preprocessing: one line "
               "per image, or --json, or --csv.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files (.jpg .jpeg .png .bmp; .dcm .nii .nii.gz with braintumor[medical]) or "
                             "folders (walked for them; a folder holding one DICOM series is one volume)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    output.add_argument("--csv", metavar="FILE", help="also write the predictions with predictions.csv's columns")
    parser.add_argument("--gradcam", metavar="OUT_DIR", help="write a Grad-CAM overlay PNG per image into OUT_DIR")
    parser.add_argument("--gradcam-class", metavar="NAME", help="explain this class instead of the predicted one")
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--slices", choices=SLICES, default="middle",
                        help="of a volume (NIfTI, multi-frame DICOM, DICOM series): classify its middle slice (the "
                             "default: one answer per file, as the model was trained on one slice per scan) or all "
                             "its slices, each a FILE#slice=N row, with a summary row FILE; near-empty slices are "
                             "skipped and counted")
    parser.add_argument("--batch-size", type=batch_size, default=BATCH_SIZE, metavar="N",
                        help=f"images per model call, 1 to {MAX_BATCH} (default %(default)s: on a CPU larger batches "
                        "were no faster and took about 27 MB more memory per image with VGG16 at 224 px; on a GPU "
                        "try 32 or 64)")


def run(args: argparse.Namespace) -> None:
    from braintumor.core.run import Run

    run = Run.completed(Path(args.run), "predict")  # answered before TensorFlow loads
    start_tensorflow(args.debug)
    from braintumor.apps import predict

    predict.run_predict(
        run, [Path(p) for p in args.paths], as_json=args.json,
        csv_path=Path(args.csv) if args.csv else None, gradcam_dir=Path(args.gradcam) if args.gradcam else None,
        gradcam_class=args.gradcam_class, tta=args.tta, batch_size=args.batch_size, slices=args.slices)
