"""`braintumor serve`: the study's web demo (Gradio) for one trained run.

Upload a scan (a photograph, or DICOM or NIfTI with braintumor[medical]; of a volume, its middle slice first,
and a slider to pick another): the page shows the class probabilities (calibrated where the run is), the
Grad-CAM overlay for the predicted class, and that this is a research tool, not a diagnosis; a scan that the
run's out-of-distribution detector flags gets a warning instead of a class. The upload goes through the same
decoding and model as `braintumor predict`, so the page and the command agree. A file that is not an image, is
truncated, or is too large is an error (a message in the page, an error for API clients); the server
keeps serving. The server serves its example files and nothing else from the disk, and no message
names a server path.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import os
import socket
from pathlib import Path

import numpy as np
from PIL import Image

from braintumor.apps.gradcam import GradCam, overlay
from braintumor.apps.predict import RunModel, load_run
from braintumor.core.atomic import write_bytes
from braintumor.core.errors import UserError, describe
from braintumor.core.logs import get_logger
from braintumor.core.run import Run
from braintumor.data.decode import Decoded
from braintumor.data.files import IMAGE_EXTENSIONS, SCAN_EXTENSIONS, is_scan, subfolders, walk
from braintumor.data.medical import ScanRefused

log = get_logger(__name__)

MAX_UPLOAD_BYTES = 20 * 2**20  # MRI slices are well under 1 MB; this bounds what one request makes us read
MAX_PIXELS = 40_000_000  # width × height, checked from the header before decoding
EXAMPLES_PER_CLASS = 2
DISPLAY_SIZE = 320  # the overlay is shown at this size, whatever the model's input size
DISCLAIMER = "Research tool, not a diagnosis: do not use it for clinical decisions."
NOT_LIKE_TRAINING = ("This image does not look like the brain MRI slices this model was trained on, so it gets no "
                     "class: its probabilities would mean nothing.")
PROMPT = "Upload a scan (JPEG, PNG, BMP, DICOM or NIfTI) or pick an example."
UPLOAD_TYPES = [*sorted(IMAGE_EXTENSIONS), *SCAN_EXTENSIONS]
API_NAME = "classify"  # the endpoint API clients call: gradio_client's predict(file, api_name="/classify")
SLICE_API_NAME = "classify_slice"  # one slice of a volume: predict(file, n, api_name="/classify_slice")


class UploadProblem(Exception):
    """An upload the demo cannot classify; its message is shown in the page."""


def read_upload(run: RunModel, path: Path, slice_number: int | None = None) -> Decoded:
    """The uploaded file decoded as for prediction (of a volume its middle slice, or slice `slice_number`), or
    UploadProblem saying what is wrong with it."""
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise UploadProblem(f"the file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    if not is_scan(path):  # a DICOM or NIfTI scan's size is bounded by its reader, from its header
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
        except Exception as err:  # noqa: BLE001  (PIL raises many types for non-images)
            raise UploadProblem(f"this is not an image that can be read ({_without_folder(err, path)}); "
                                "upload a JPEG, PNG, BMP, DICOM or NIfTI scan") from err
        if width * height > MAX_PIXELS:
            raise UploadProblem(f"the image is {width} × {height} pixels; the limit is {MAX_PIXELS // 10**6} "
                                "megapixels")
    try:
        return run.decode_scan(path, "middle" if slice_number is None else slice_number)
    except ScanRefused as refused:  # the whole reason: "modality CT, not MR", "install braintumor[medical]"
        raise UploadProblem(_without_folder(refused, path)) from refused
    except Exception as err:  # noqa: BLE001  (truncated or corrupt image data)
        raise UploadProblem(f"the image data cannot be decoded ({_without_folder(err, path)}); the file may be "
                            "truncated or damaged") from err


def _without_folder(err: Exception, path: Path) -> str:
    """The error's first line with the upload's server folder cut out (PIL names the file it read)."""
    return describe(err).replace(str(path.parent) + os.sep, "")


def example_files(run: Run) -> list[Path]:
    """A few of the run's own Testing images per class, where that folder still exists."""
    cfg = run.read_config()
    test_dir = Path(cfg.data.root).expanduser() / cfg.data.test_dir
    if not test_dir.is_dir():
        return []
    present = set(subfolders(test_dir))
    return [path for name in run.classes() if name in present for path in walk(test_dir / name)[0][:EXAMPLES_PER_CLASS]]


def cache_png(image: np.ndarray, cache_dir: Path) -> Path:
    """`image` as a PNG under `cache_dir`, named by its content and written once, atomically.

    Gradio would save a returned array itself, but it rewrites the same content-named file in place for
    every identical output, so a user downloading it while another user's identical request rewrites it
    gets a truncated response ("Too little data for declared Content-Length"). A file that exists is
    complete and never touched again; the rename makes two writers of the same content harmless.
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    data = buffer.getvalue()
    path = cache_dir / hashlib.sha256(data).hexdigest() / "gradcam.png"
    if not path.exists():
        write_bytes(path, data)
    return path


def build_demo(source: Run, examples: list[Path]):
    """The Gradio Blocks app for the run `source`, with `examples` (image files) to pick from."""
    import gradio as gr

    run = load_run(source)
    cam = GradCam(run.model)

    def classify(scan: str | None, slice_number: int | None = None):
        """The answer for an upload (of a volume its middle slice, or slice `slice_number`): probabilities,
        Grad-CAM picture, summary; and, for the slider, a volume's slices with signal and the one shown."""
        if not scan:
            return None, None, PROMPT, None
        try:
            decoded = read_upload(run, Path(scan), slice_number)
        except UploadProblem as problem:
            log.info("rejected upload %s: %s", Path(scan).name, problem)
            raise gr.Error(f"Cannot use this file: {problem}.", print_exception=False) from None
        number, image = decoded.images[0]
        shown = (decoded.slices_with_signal, number) if decoded.volume else None
        where = f"Slice {number}: " if decoded.volume else ""
        scores = run.scorer(image[None])
        probs = scores.probabilities[0]
        if scores.in_distribution is not None and not scores.in_distribution[0]:
            log.info("upload %s is unlike the training data (score %.2f)", Path(scan).name, scores.ood_scores[0])
            return None, None, f"{where}**{NOT_LIKE_TRAINING}** {DISCLAIMER}", shown
        heatmap, _ = cam(image[None], np.array([probs.argmax()]))
        top = int(probs.argmax())
        picture = Image.fromarray(overlay(image, heatmap[0])).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.BILINEAR)
        return ({name: float(p) for name, p in zip(run.classes, probs, strict=True)},
                str(cache_png(np.asarray(picture), Path(heat.GRADIO_CACHE))),
                f"{where}Predicted **{run.classes[top]}** ({probs[top]:.1%}). {DISCLAIMER}", shown)

    def classify_slice(scan: str | None, slice_number: float):
        return classify(scan, int(slice_number))[:3]

    def volume_slider(shown):
        """The slider over a volume's slices with signal, at the slice shown; hidden for a 2-D image."""
        if shown is None:
            return gr.Slider(visible=False)
        with_signal, number = shown
        return gr.Slider(minimum=with_signal[0], maximum=with_signal[-1], value=number, step=1, visible=True,
                         info=f"{len(with_signal)} slices with signal, from {with_signal[0]} to {with_signal[-1]}; "
                              "near-empty ones are skipped")

    with gr.Blocks(title="braintumor demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## Brain MRI tumour classification\nRun `{source.path.name}` ({run.backbone}, "
                    f"{run.image_size} px; classes: {', '.join(run.classes)}).\n\n**{DISCLAIMER}**")
        volume = gr.State(None)  # of a volume upload: its slices with signal and the slice shown; None otherwise
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="MRI scan", file_types=UPLOAD_TYPES, type="filepath", elem_id="upload")
                slider = gr.Slider(label="slice of the volume", step=1, visible=False, elem_id="slice")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[upload], label="Testing images of this run",
                                example_labels=[f"{path.parent.name}/{path.name}" for path in examples])
            with gr.Column():
                # the labels name the endpoint's outputs for API clients (view_api)
                status = gr.Markdown(PROMPT, label="summary", elem_id="status")
                label = gr.Label(label="probabilities", num_top_classes=len(run.classes), elem_id="probabilities")
                heat = gr.Image(label="gradcam", type="filepath", elem_id="gradcam", interactive=False)
        # the slider hides first, so a refused upload after a volume does not leave the old volume's slider
        upload.change(lambda: gr.Slider(visible=False), outputs=[slider], api_visibility="private").then(
            classify, inputs=[upload], outputs=[label, heat, status, volume], api_name=API_NAME).success(
            volume_slider, inputs=[volume], outputs=[slider], api_visibility="private")
        slider.release(classify_slice, inputs=[upload, slider], outputs=[label, heat, status],
                       api_name=SLICE_API_NAME)
    return demo


def check_address(host: str, port: int) -> None:
    """UserError unless this process can listen on host:port now, so a bad --host or --port is reported
    before the model loads, naming the real cause (Gradio checks the port on 127.0.0.1 only)."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port; choose one from 1024 to 65535 (default 7860)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        cause = getattr(err, "strerror", None) or describe(err)  # gaierror's text without "[Errno -2]"
        raise UserError(f"--host {host[:100]} is neither an address of this machine nor a name it can resolve "
                        f"({cause}); use 127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from err
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a just-closed port is free
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                problem = f"port {port} is in use (another program, or a demo still running); choose another --port"
            elif err.errno == errno.EADDRNOTAVAIL:
                problem = (f"--host {host[:100]} is not an address of this machine; use 127.0.0.1 (this machine only) "
                           "or 0.0.0.0 (every network)")
            elif err.errno == errno.EACCES:
                problem = f"port {port} needs administrator rights; choose a --port from 1024 to 65535"
            else:
                problem = f"cannot listen on {host}:{port} ({describe(err)}); choose another --host or --port"
            raise UserError(problem) from err


def start(run_dir: Path, host: str = "127.0.0.1", port: int = 7860):
    """Check the address, then the run, load it and start the demo in a background thread; return it (`.close()`
    stops it). A bad address is named first: it costs nothing to check, and the run folder may be fine."""
    if importlib.util.find_spec("gradio") is None:
        raise UserError("serve needs gradio, which is not installed; install the extra: pip install 'braintumor[demo]'")
    check_address(host, port)
    run = Run.completed(run_dir, "serve")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a medical demo
    examples = example_files(run)
    demo = build_demo(run, examples)
    try:
        # Gradio serves files below allowed_paths to anyone: exactly the examples, not their folders
        demo.launch(server_name=host, server_port=port, allowed_paths=[str(path) for path in examples],
                    max_file_size=MAX_UPLOAD_BYTES, ssr_mode=False, footer_links=[], quiet=True,
                    prevent_thread_lock=True)
    except OSError as err:  # the port was taken between check_address and now
        raise UserError(f"cannot serve on {host}:{port} ({describe(err)}); choose another --port") from err
    return demo


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 7860) -> None:
    """`braintumor serve`: run the demo until interrupted."""
    demo = start(run_dir, host, port)
    print(f"serving {run_dir} at {demo.local_url} (Ctrl-C stops)", flush=True)
    demo.block_thread()
