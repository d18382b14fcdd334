"""`braintumor serve`: the study's web demo (Gradio) for one trained run.

Upload a scan: the page shows the class probabilities, the Grad-CAM overlay for the predicted class,
and that this is a research tool, not a diagnosis. The upload goes through the same decoding and
model as `braintumor predict`, so the page and the command agree. A file that is not an image, is
truncated, or is too large gets a message in the page; the server keeps serving.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image

from braintumor.apps.gradcam import GradCam, overlay
from braintumor.apps.predict import RunModel, load_run, predict_batch
from braintumor.core.errors import UserError, describe
from braintumor.core.logs import get_logger
from braintumor.core.run import Run
from braintumor.data.files import subfolders, walk

log = get_logger(__name__)

MAX_UPLOAD_BYTES = 20 * 2**20  # MRI slices are well under 1 MB; this bounds what one request makes us read
MAX_PIXELS = 40_000_000  # width × height, checked from the header before decoding
EXAMPLES_PER_CLASS = 2
DISPLAY_SIZE = 320  # the overlay is shown at this size, whatever the model's input size
DISCLAIMER = "Research tool, not a diagnosis: do not use it for clinical decisions."


class UploadProblem(Exception):
    """An upload the demo cannot classify; its message is shown in the page."""


def read_upload(run: RunModel, path: Path) -> np.ndarray:
    """The uploaded file decoded as for prediction, or UploadProblem saying what is wrong with it."""
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise UploadProblem(f"the file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Exception as err:  # noqa: BLE001  (PIL raises many types for non-images)
        raise UploadProblem(f"this is not an image that can be read ({describe(err)}); "
                            "upload a JPEG, PNG or BMP scan") from err
    if width * height > MAX_PIXELS:
        raise UploadProblem(f"the image is {width} × {height} pixels; the limit is {MAX_PIXELS // 10**6} megapixels")
    try:
        return run.decode(path)
    except Exception as err:  # noqa: BLE001  (truncated or corrupt image data)
        raise UploadProblem(f"the image data cannot be decoded ({describe(err)}); the file may be truncated "
                            "or damaged") from err


def example_files(run: Run) -> list[Path]:
    """A few of the run's own Testing images per class, where that folder still exists."""
    cfg = run.read_config()
    test_dir = Path(cfg.data.root).expanduser() / cfg.data.test_dir
    if not test_dir.is_dir():
        return []
    present = set(subfolders(test_dir))
    return [path for name in run.classes() if name in present for path in walk(test_dir / name)[0][:EXAMPLES_PER_CLASS]]


def build_demo(source: Run, examples: list[Path]):
    """The Gradio Blocks app for the run `source`, with `examples` (image files) to pick from."""
    import gradio as gr

    run = load_run(source)
    cam = GradCam(run.model)

    def classify(upload: str | None):
        if not upload:
            return None, None, "Upload a scan (JPEG, PNG or BMP) or pick an example."
        try:
            image = read_upload(run, Path(upload))
        except UploadProblem as problem:
            log.info("rejected upload %s: %s", Path(upload).name, problem)
            return None, None, f"**Cannot use this file:** {problem}."
        probs = predict_batch(run.model, image[None])[0]
        heatmap, _ = cam(image[None], np.array([probs.argmax()]))
        top = int(probs.argmax())
        shown = Image.fromarray(overlay(image, heatmap[0])).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.BILINEAR)
        return ({name: float(p) for name, p in zip(run.classes, probs, strict=True)}, np.asarray(shown),
                f"Predicted **{run.classes[top]}** ({probs[top]:.1%}). {DISCLAIMER}")

    with gr.Blocks(title="braintumor demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## Brain MRI tumour classification\nRun `{source.path.name}` ({run.backbone}, "
                    f"{run.image_size} px; classes: {', '.join(run.classes)}).\n\n**{DISCLAIMER}**")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="MRI scan", file_types=[".jpg", ".jpeg", ".png", ".bmp"], type="filepath",
                                 elem_id="upload")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[upload], label="Testing images of this run",
                                example_labels=[f"{path.parent.name}/{path.name}" for path in examples])
            with gr.Column():
                status = gr.Markdown("Upload a scan (JPEG, PNG or BMP) or pick an example.", elem_id="status")
                label = gr.Label(label="class probabilities", num_top_classes=len(run.classes), elem_id="probabilities")
                heat = gr.Image(label="Grad-CAM (predicted class)", type="numpy", elem_id="gradcam",
                                interactive=False)
        upload.change(classify, inputs=[upload], outputs=[label, heat, status])
    return demo


def serve(run: Run, host: str = "127.0.0.1", port: int = 7860) -> None:
    """`braintumor serve`: run the demo until interrupted."""
    if importlib.util.find_spec("gradio") is None:
        raise UserError("serve needs gradio, which is not installed; install the extra: pip install 'braintumor[demo]'")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a medical demo
    examples = example_files(run)
    demo = build_demo(run, examples)
    allowed = sorted({str(path.parent) for path in examples})  # Gradio serves only files below allowed paths
    print(f"serving {run.path} at http://{host}:{port} (Ctrl-C stops)", flush=True)
    try:
        demo.launch(server_name=host, server_port=port, allowed_paths=allowed, max_file_size=MAX_UPLOAD_BYTES,
                    ssr_mode=False, footer_links=[], quiet=True)
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port} ({describe(err)}); choose another --port") from err
