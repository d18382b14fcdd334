"""The web demo in a real browser: Debian's headless Chromium driven by Selenium against `braintumor serve`.

Set BRAINTUMOR_SCREENSHOT=PATH to keep the screenshot, and BRAINTUMOR_SCREENSHOT_RUN=RUN_DIR to serve a run of
your own with the same classes (the README's docs/serve.png: the quickstart run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                              ".ci/run installs them)"),
]
selenium = pytest.importorskip("selenium", reason="needs selenium (pip install 'braintumor[demo]')")
pytest.importorskip("gradio", reason="needs gradio (pip install 'braintumor[demo]')")

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
UNLIKE_TRAINING = "does not look like the brain MRI slices"  # the demo's warning (apps/serve.py)
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"braintumor serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"braintumor serve did not answer at {url} within {seconds} s")


@pytest.fixture
def demo_run(trained_run) -> Path:
    return Path(os.environ.get("BRAINTUMOR_SCREENSHOT_RUN") or trained_run)


@pytest.fixture
def served(demo_run, tmp_path):
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "braintumor.cli", "serve", "--run", str(demo_run),
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/", server)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def _upload(driver, path: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def _clear(driver) -> None:
    driver.find_element(By.CSS_SELECTOR, "#upload button[aria-label=Clear]").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))


def _status(driver, contains: str) -> str:
    WebDriverWait(driver, 60).until(lambda d: contains in d.find_element(By.ID, "status").text)
    return driver.find_element(By.ID, "status").text


def _error_toast(driver, contains: str) -> str:
    WebDriverWait(driver, 60).until(
        lambda d: any(contains in toast.text for toast in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")))
    return " ".join(toast.text for toast in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))


def _predict_json(run: Path, image: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "braintumor.cli", "predict", "--run", str(run), str(image), "--json"],
                          capture_output=True, text=True, env=ENV, check=True)
    return json.loads(done.stdout)[0]


def test_demo_in_browser_matches_predict_and_survives_a_bad_upload(demo_run, synth_root, served, browser, tmp_path):
    from braintumor.apps.serve import example_files
    from braintumor.core.run import Run

    scan = synth_root / "Testing" / "pituitary_tumor" / "synth_0002.jpg"
    expected = _predict_json(demo_run, scan)
    browser.get(served)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    assert "not a diagnosis" in browser.find_element(By.TAG_NAME, "body").text

    _upload(browser, scan)
    assert f"Predicted {expected['predicted']}" in _status(browser, "Predicted")
    shown = browser.find_element(By.CSS_SELECTOR, "#probabilities [data-testid=label-output-value]").text
    assert shown == expected["predicted"]
    assert browser.find_elements(By.CSS_SELECTOR, "#gradcam img"), "no Grad-CAM overlay shown"
    screenshot = Path(os.environ.get("BRAINTUMOR_SCREENSHOT") or tmp_path / "serve.png")
    browser.save_screenshot(str(screenshot))

    _clear(browser)
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("this is a text file, not a scan\n")
    _upload(browser, text_file)
    toast = _error_toast(browser, "not an image that can be read")
    assert "Cannot use this file" in toast and str(tmp_path) not in toast

    _clear(browser)
    other = synth_root / "Testing" / "glioma_tumor" / "synth_0001.jpg"
    _upload(browser, other)
    assert f"Predicted {_predict_json(demo_run, other)['predicted']}" in _status(browser, "Predicted")

    _clear(browser)  # a photograph: the run's out-of-distribution detector flags it, as predict does
    photo = tmp_path / "china.jpg"
    Image.fromarray(load_sample_images().images[0]).save(photo)
    assert _predict_json(demo_run, photo)["in_distribution"] is False
    _upload(browser, photo)
    assert "Predicted" not in _status(browser, UNLIKE_TRAINING)

    _clear(browser)  # a DICOM file, with the [medical] extra (in dev): a class, or the warning where predict flags it
    dicom = Path(pytest.importorskip("pydicom.data").get_testdata_file("MR_small.dcm", download=False))
    _upload(browser, dicom)
    answer = _predict_json(demo_run, dicom)
    if answer["in_distribution"]:
        assert f"Predicted {answer['predicted']}" in _status(browser, "Predicted")
    else:  # the demo run learnt synthetic images only
        _status(browser, UNLIKE_TRAINING)

    _clear(browser)  # an example is served although its folder is not (tests/test_serve.py)
    example = example_files(Run(demo_run))[-1]
    browser.find_element(By.XPATH, f"//*[normalize-space(text())='{example.parent.name}/{example.name}']").click()
    assert f"Predicted {_predict_json(demo_run, example)['predicted']}" in _status(browser, "Predicted")
