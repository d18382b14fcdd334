"""The web demo without a browser: upload checks, examples, its address, and the running server through
gradio_client, the client API users call (tests/test_serve_browser.py drives the page)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from braintumor.apps.predict import load_run
from braintumor.apps.serve import MAX_PIXELS, MAX_UPLOAD_BYTES, UploadProblem, example_files, read_upload
from braintumor.cli import main
from braintumor.core.run import Run

gradio_client = pytest.importorskip("gradio_client", reason="needs gradio (pip install 'braintumor[demo]')")


@pytest.fixture(scope="module")
def run(trained_run):
    return load_run(Run(trained_run))


def test_a_scan_decodes_as_predict_does(run, synth_root):
    scan = synth_root / "Testing" / "glioma_tumor" / "synth_0000.jpg"
    assert np.array_equal(read_upload(run, scan).images[0][1], run.decode(scan))


@pytest.mark.parametrize("problem,message", [
    ("text", "not an image that can be read"),
    ("truncated", "may be truncated"),
    ("too many pixels", "megapixels"),
    ("too many bytes", f"the limit is {MAX_UPLOAD_BYTES // 2**20} MB"),
])
def test_bad_uploads_get_a_message(run, synth_root, tmp_path, problem, message):
    path = tmp_path / "upload.png"
    if problem == "text":
        path.write_text("not a scan")
    elif problem == "truncated":
        path = tmp_path / "upload.jpg"
        path.write_bytes((synth_root / "Testing" / "no_tumor" / "synth_0000.jpg").read_bytes()[:400])
    elif problem == "too many pixels":
        Image.new("1", (MAX_PIXELS // 4000 + 1, 4000)).save(path)  # tiny file, huge image
    else:
        path.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(UploadProblem, match=message) as error:
        read_upload(run, path)
    assert str(tmp_path) not in str(error.value)  # the page shows it: no server folder in it


def test_examples_are_the_runs_testing_images_a_few_per_class(trained_run, synth_root):
    examples = example_files(Run(trained_run))
    assert len(examples) == 8
    assert {p.parent.name for p in examples} == {p.name for p in (synth_root / "Testing").iterdir()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_run):
    """One in-process demo server on localhost for this module's client tests."""
    from braintumor.apps.serve import start

    demo = start(trained_run, "127.0.0.1", _free_port())
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def _fetch(server: str, path) -> tuple[int, bytes]:
    """Gradio's file route, as any browser on the network may call it."""
    try:
        with urllib.request.urlopen(f"{server}gradio_api/file={urllib.parse.quote(str(path))}", timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def _predicted_label(run, image, capsys) -> str:
    capsys.readouterr()  # the in-process server's own messages of this test so far are not predict's answer
    assert main(["predict", "--run", str(run), str(image), "--json"]) == 0
    return json.loads(capsys.readouterr().out)[0]["predicted"]


def test_the_server_serves_its_examples_and_no_other_file_beside_them(server, trained_run):
    example = example_files(Run(trained_run))[0]
    notes = example.parent / "notes.txt"
    other = next(p for p in sorted(example.parent.iterdir()) if p not in example_files(Run(trained_run)))
    notes.write_text("a note someone left beside the scans\n")
    try:
        assert _fetch(server, example) == (200, example.read_bytes())
        assert _fetch(server, notes)[0] == 403
        assert _fetch(server, other)[0] == 403
        assert _fetch(server, trained_run / "config.yaml")[0] == 403
    finally:
        notes.unlink()


def test_the_api_endpoint_and_its_outputs_have_names(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(endpoints) == ["/classify", "/classify_slice"]
    assert [p["parameter_name"] for p in endpoints["/classify"]["parameters"]] == ["scan"]
    assert [p["parameter_name"] for p in endpoints["/classify_slice"]["parameters"]] == ["scan", "slice_number"]
    for endpoint in endpoints.values():
        assert [r["label"] for r in endpoint["returns"]] == ["probabilities", "gradcam", "summary"]


def test_a_non_image_is_an_api_error_and_no_reply_names_a_server_path(client, server, trained_run, synth_root,
                                                                       tmp_path, capsys):
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("this is a text file, not a scan\n")
    with pytest.raises(gradio_client.exceptions.AppError,
                       match="Cannot use this file: this is not an image that can be read") as error:
        client.predict(gradio_client.handle_file(str(text_file)), api_name="/classify")
    assert "/" not in str(error.value)  # neither the upload folder nor any other server path

    scan = synth_root / "Testing" / "meningioma_tumor" / "synth_0003.jpg"
    probabilities, gradcam, summary = client.predict(gradio_client.handle_file(str(scan)), api_name="/classify")
    assert probabilities["label"] == _predicted_label(trained_run, scan, capsys)
    assert f"Predicted **{probabilities['label']}**" in summary and "/" not in summary
    assert Image.open(gradcam).size == (320, 320)
    with urllib.request.urlopen(server, timeout=30) as page, urllib.request.urlopen(f"{server}config") as config:
        shown = page.read().decode() + config.read().decode()
    assert str(synth_root) not in shown and str(trained_run) not in shown


def test_a_photograph_gets_the_warning_instead_of_a_class(client, tmp_path):
    from sklearn.datasets import load_sample_images

    photo = tmp_path / "palace.jpg"
    Image.fromarray(load_sample_images().images[0]).save(photo)
    probabilities, gradcam, summary = client.predict(gradio_client.handle_file(str(photo)), api_name="/classify")
    assert not probabilities and not gradcam  # no class, no map
    assert "does not look like the brain MRI slices this model was trained on" in summary
    assert "Predicted" not in summary


@pytest.mark.slow
@pytest.mark.extended  # about 25 s of CPU, nearly all Gradio's own: the extended tier (README, Development)
def test_50_users_sending_the_same_scan_at_once_all_get_the_answer(server, trained_run, capsys):
    """Gradio rewrote the content-named output picture for each identical answer while others downloaded it:
    2 or 3 of 50 users got a truncated reply (RemoteProtocolError). cache_png writes each picture once."""
    scan = example_files(Run(trained_run))[0]
    expected = _predicted_label(trained_run, scan, capsys)
    # each with its own connection; gradio_client's 20 s timeout is shorter than 50 answers took on 2 loaded cores
    users = [gradio_client.Client(server, verbose=False, httpx_kwargs={"timeout": 120}) for _ in range(50)]

    def ask(user):
        return user.submit(gradio_client.handle_file(str(scan)), api_name="/classify").result(timeout=120)

    with ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(ask, users, timeout=180))
    assert [probabilities["label"] for probabilities, _, _ in answers] == [expected] * 50
    assert all(Image.open(gradcam).size == (320, 320) for _, gradcam, _ in answers)


@pytest.mark.parametrize("option,value,cause", [
    ("--port", "70000", "--port 70000 is not a TCP port; choose one from 1024 to 65535"),
    ("--port", "-1", "--port -1 is not a TCP port"),
    ("--host", "256.1.1.1", "--host 256.1.1.1 is neither an address of this machine nor a name it can resolve "
                            "(Name or service not known); use 127.0.0.1"),
    ("--host", "no-such-host.invalid", "--host no-such-host.invalid is neither an address of this machine"),
    ("--host", "192.0.2.1", "--host 192.0.2.1 is not an address of this machine; use 127.0.0.1"),
])
def test_a_bad_address_is_one_line_naming_it_before_the_run_is_read(tmp_path, capsys, option, value, cause):
    # the run folder does not exist: the address is checked first, before any model loads
    assert main(["serve", "--run", str(tmp_path / "no-run"), option, value]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {cause}") and error.count("\n") == 1


def test_a_port_in_use_is_one_line_saying_so(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(tmp_path / "no-run"), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error == f"error: port {port} is in use (another program, or a demo still running); choose another --port\n"


def test_dicom_and_nifti_uploads_get_a_class_and_a_refused_scan_its_reason(client, trained_run, capsys):
    pydicom_data = pytest.importorskip("pydicom.data", reason="needs braintumor[medical]")
    nibabel = pytest.importorskip("nibabel", reason="needs braintumor[medical]")
    from pathlib import Path

    mr = Path(pydicom_data.get_testdata_file("MR_small.dcm", download=False))
    volume = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    for scan in (mr, volume):
        probabilities, _, summary = client.predict(gradio_client.handle_file(str(scan)), api_name="/classify")
        capsys.readouterr()
        assert main(["predict", "--run", str(trained_run), str(scan), "--json"]) == 0
        row = json.loads(capsys.readouterr().out)[-1]  # a volume: its middle slice, then its summary row
        if not row["in_distribution"]:  # a run trained on synthetic images may find real scans unlike them
            assert not (probabilities or {}).get("label") and "does not look like the brain MRI slices" in summary
            continue
        assert probabilities["label"] == row["predicted"]
        assert f"Predicted **{probabilities['label']}**" in summary
    ct = pydicom_data.get_testdata_file("CT_small.dcm", download=False)
    with pytest.raises(gradio_client.exceptions.AppError, match="Cannot use this file: modality CT, not MR"):
        client.predict(gradio_client.handle_file(ct), api_name="/classify")


def test_a_volume_shows_its_middle_slice_and_the_slider_classifies_the_slice_it_picks(client, trained_run, synth_root,
                                                                                     tmp_path, capsys):
    """nibabel's anatomical.nii (25 slices; the shared run finds them all unlike its synthetic training images) and
    a volume of three synthetic Testing images (which it classifies): each slice's answer is predict's row."""
    nibabel = pytest.importorskip("nibabel", reason="needs braintumor[medical]")
    from pathlib import Path

    anatomical = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    testing = synth_root / "Testing"
    gray = [np.asarray(Image.open(testing / name / "synth_0000.jpg").convert("L")).T[::-1, ::-1]  # as viewers show
            for name in ("glioma_tumor", "meningioma_tumor", "pituitary_tumor")]
    synthetic = tmp_path / "synthetic.nii.gz"
    image = nibabel.Nifti1Image(np.stack(gray, axis=-1), np.eye(4))
    image.header["cal_min"], image.header["cal_max"] = 0, 255  # the window that keeps the gray levels
    nibabel.save(image, synthetic)
    classified = 0
    for volume, middle, other in ((anatomical, 12, 3), (synthetic, 1, 2)):
        capsys.readouterr()
        assert main(["predict", "--run", str(trained_run), str(volume), "--slices", "all", "--json"]) == 0
        rows = {row["file"]: row for row in json.loads(capsys.readouterr().out)}
        answers = {middle: client.predict(gradio_client.handle_file(str(volume)), api_name="/classify"),
                   other: client.predict(gradio_client.handle_file(str(volume)), other, api_name="/classify_slice")}
        for number, (probabilities, gradcam, summary) in answers.items():
            row = rows[f"{volume}#slice={number}"]
            assert summary.startswith(f"Slice {number}: ")
            if not row["in_distribution"]:
                assert not gradcam and "does not look like the brain MRI slices" in summary
                continue
            shown = {item["label"]: item["confidence"] for item in probabilities["confidences"]}
            assert probabilities["label"] == row["predicted"] and gradcam
            assert np.allclose([shown[name] for name in row["probabilities"]], list(row["probabilities"].values()),
                               atol=1e-6)  # one image per call, a batch in predict: float noise
            classified += 1
    assert classified >= 1  # the comparison of probabilities was made
    with pytest.raises(gradio_client.exceptions.AppError, match="no slice 25: the volume's slices are 0 to 24"):
        client.predict(gradio_client.handle_file(str(anatomical)), 25, api_name="/classify_slice")
