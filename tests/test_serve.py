"""The web demo's upload checks and examples, without a browser (tests/test_serve_browser.py drives the page)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from braintumor.apps.predict import load_run
from braintumor.apps.serve import MAX_PIXELS, MAX_UPLOAD_BYTES, UploadProblem, example_files, read_upload
from braintumor.core.run import Run


@pytest.fixture(scope="module")
def run(trained_run):
    return load_run(Run(trained_run))


def test_a_scan_decodes_as_predict_does(run, synth_root):
    scan = synth_root / "Testing" / "glioma_tumor" / "synth_0000.jpg"
    assert np.array_equal(read_upload(run, scan), run.decode(scan))


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
    with pytest.raises(UploadProblem, match=message):
        read_upload(run, path)


def test_examples_are_the_runs_testing_images_a_few_per_class(trained_run, synth_root):
    examples = example_files(Run(trained_run))
    assert len(examples) == 8
    assert {p.parent.name for p in examples} == {p.name for p in (synth_root / "Testing").iterdir()}
