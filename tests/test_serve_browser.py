"""The web demo in a real browser: Debian's headless Chromium driven by Selenium against the server `braintumor serve`
starts (apps.serve.start), here in the test's process, as predict runs, so that TensorFlow is imported once.

Set BRAINTUMOR_SCREENSHOT=PATH to keep the screenshot, and BRAINTUMOR_SCREENSHOT_RUN=RUN_DIR to serve a run of
your own with the same classes (the README's docs/serve.png: the quickstart run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
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
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from braintumor.cli import main  # noqa: E402

UNLIKE_TRAINING = "does not look like the brain MRI slices"  # the demo's warning (apps/serve.py)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def demo_run(trained_run) -> Path:
    return Path(os.environ.get("BRAINTUMOR_SCREENSHOT_RUN") or trained_run)


@pytest.fixture
def served(demo_run):
    from braintumor.apps.serve import start

    demo = start(demo_run, "127.0.0.1", _free_port())  # returns once the page answers
    yield demo.local_url
    demo.close()


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


def _slider(driver) -> list:
    """The volume slider's range input where it is shown."""
    return [e for e in driver.find_elements(By.CSS_SELECTOR, "#slice input[type=range]") if e.is_displayed()]


def _error_toast(driver, contains: str) -> str:
    WebDriverWait(driver, 60).until(
        lambda d: any(contains in toast.text for toast in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")))
    return " ".join(toast.text for toast in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))


def _predict_json(run: Path, image: Path, capsys) -> dict:
    capsys.readouterr()  # the in-process server's own messages so far are not predict's answer
    assert main(["predict", "--run", str(run), str(image), "--json"]) == 0
    return json.loads(capsys.readouterr().out)[0]


def test_demo_in_browser_matches_predict_and_survives_a_bad_upload(demo_run, synth_root, served, browser, tmp_path,
                                                                   capsys):
    from braintumor.apps.serve import example_files
    from braintumor.core.run import Run

    scan = synth_root / "Testing" / "pituitary_tumor" / "synth_0002.jpg"
    expected = _predict_json(demo_run, scan, capsys)
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
    expected = _predict_json(demo_run, other, capsys)  # each before its upload: the server logs to the same stdout
    _upload(browser, other)
    assert f"Predicted {expected['predicted']}" in _status(browser, "Predicted")

    _clear(browser)  # a photograph: the run's out-of-distribution detector flags it, as predict does
    photo = tmp_path / "china.jpg"
    Image.fromarray(load_sample_images().images[0]).save(photo)
    assert _predict_json(demo_run, photo, capsys)["in_distribution"] is False
    _upload(browser, photo)
    assert "Predicted" not in _status(browser, UNLIKE_TRAINING)

    _clear(browser)  # a DICOM file, with the [medical] extra (in dev): a class, or the warning where predict flags it
    dicom = Path(pytest.importorskip("pydicom.data").get_testdata_file("MR_small.dcm", download=False))
    answer = _predict_json(demo_run, dicom, capsys)
    _upload(browser, dicom)
    if answer["in_distribution"]:
        assert f"Predicted {answer['predicted']}" in _status(browser, "Predicted")
    else:  # the demo run learnt synthetic images only
        _status(browser, UNLIKE_TRAINING)
    assert not _slider(browser)  # one 2-D image: no slider

    _clear(browser)  # a volume: its middle slice, and a slider over its slices; a click on it classifies another
    volume = Path(pytest.importorskip("nibabel").__file__).parent / "tests" / "data" / "anatomical.nii"
    _upload(browser, volume)
    _status(browser, "Slice 12:")
    WebDriverWait(browser, 30).until(_slider)
    slider = _slider(browser)[0]
    assert slider.get_attribute("value") == "12"
    ActionChains(browser).move_to_element_with_offset(slider, -slider.size["width"] // 4, 0).click().perform()
    picked = slider.get_attribute("value")
    assert picked != "12"
    _status(browser, f"Slice {picked}:")

    _clear(browser)  # an example is served although its folder is not (tests/test_serve.py)
    example = example_files(Run(demo_run))[-1]
    expected = _predict_json(demo_run, example, capsys)
    browser.find_element(By.XPATH, f"//*[normalize-space(text())='{example.parent.name}/{example.name}']").click()
    assert f"Predicted {expected['predicted']}" in _status(browser, "Predicted")
