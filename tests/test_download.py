"""Download from a local zip and from a local HTTP server; bad archives fail cleanly."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import re
import shutil
import socket
import stat
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from braintumor.cli import main
from braintumor.core.errors import UserError
from braintumor.data.download import MARKER, count_images, download, manifest_hash
from braintumor.data.synth import make_dataset

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/brain-tumor-mri"
TOP = "Brain-Tumor-Classification-DataSet-master"  # the GitHub archive's top-level folder


def _zip_tree(tree: Path, zip_path: Path, extra: dict[str | zipfile.ZipInfo, str] | None = None) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(f"{TOP}/README.md", "brain tumour data set")
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                zf.write(path, f"{TOP}/{path.relative_to(tree).as_posix()}")
        for name, text in (extra or {}).items():
            zf.writestr(name, text)
    return zip_path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A zip of a tiny synthetic tree, and the verification data computed from that tree."""
    base = tmp_path_factory.mktemp("download")
    tree = make_dataset(base / "tree", train_per_class=2, test_per_class=1, size=32)
    expected = {"counts": count_images(tree), "manifest": manifest_hash(tree)}
    return tree, _zip_tree(tree, base / "data.zip"), expected


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (ephemeral port), shut down after the test."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/data.zip"


def _assert_installed(dest: Path, expected: dict) -> None:
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "Testing", "Training"]
    assert count_images(dest) == expected["counts"]
    assert manifest_hash(dest) == expected["manifest"]
    assert not list(dest.parent.glob("*.partial-*"))


def test_download_from_archive_then_noop(synthetic: tuple[Path, Path, dict], tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    _, archive, expected = synthetic
    dest = tmp_path / "data/brain-tumor-mri"
    assert download(dest, archive=archive, expected=expected) == dest
    _assert_installed(dest, expected)
    marker_time = (dest / MARKER).stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="braintumor")
    # no archive and an unreachable URL: the second call must not fetch anything
    download(dest, url=_closed_port_url(), expected=expected)
    assert "already there and verified" in caplog.text
    assert (dest / MARKER).stat().st_mtime_ns == marker_time


def test_download_over_http(synthetic: tuple[Path, Path, dict], server: tuple[Path, str], tmp_path: Path) -> None:
    _, archive, expected = synthetic
    www, base_url = server
    (www / "data.zip").write_bytes(archive.read_bytes())
    dest = tmp_path / "brain-tumor-mri"
    download(dest, url=f"{base_url}/data.zip", expected=expected)
    _assert_installed(dest, expected)


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(f"{TOP}/Training/link.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated or not a valid zip"),
    ("escape", "escape the destination"),
    ("symlink", "is a link"),
    ("counts", "verification failed: Training/glioma_tumor has 2 images, expected 3"),
    ("manifest", "content manifest hash differs"),
    ("unreachable", "use --archive|pass it with --archive"),
])
def test_bad_cases_fail_cleanly(synthetic: tuple[Path, Path, dict], tmp_path: Path, case: str, message: str) -> None:
    tree, archive, expected = synthetic
    kwargs: dict = {"archive": tmp_path / "bad.zip", "expected": expected}
    if case == "truncated":
        data = archive.read_bytes()
        kwargs["archive"].write_bytes(data[: len(data) // 2])
    elif case in ("escape", "symlink"):
        entry = f"{TOP}/../../evil.txt" if case == "escape" else _symlink_entry()
        _zip_tree(tree, kwargs["archive"], extra={entry: "/etc/passwd"})
    elif case == "counts":
        kwargs.update(archive=archive, expected={**expected, "counts": {
            **expected["counts"], "Training": {**expected["counts"]["Training"], "glioma_tumor": 3}}})
    elif case == "manifest":
        kwargs.update(archive=archive, expected={**expected, "manifest": "0" * 64})
    else:
        kwargs.update(archive=None, url=_closed_port_url())
    dest = tmp_path / "out/brain-tumor-mri"
    with pytest.raises(UserError, match=message) as err:
        download(dest, **kwargs)
    assert "\n" not in str(err.value)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_refuses_unverified_existing_dest(synthetic: tuple[Path, Path, dict], tmp_path: Path) -> None:
    _, archive, expected = synthetic
    dest = tmp_path / "brain-tumor-mri"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a verified copy"):
        download(dest, archive=archive, expected=expected)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("bad", ["truncated", "synthetic"])
def test_cli_exits_2_on_bad_archive(synthetic: tuple[Path, Path, dict], tmp_path: Path, bad: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, archive, _ = synthetic
    if bad == "truncated":
        archive = tmp_path / "bad.zip"
        archive.write_bytes(b"PK\x03\x04 not really a zip")
    dest = tmp_path / "brain-tumor-mri"
    # the CLI verifies against the real data set, so a synthetic archive is refused too
    assert main(["data", "download", "--dest", str(dest), "--archive", str(archive)]) == 2
    messages = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(messages) == 1 and messages[0].startswith("error: ")  # tqdm bars may precede it
    assert not dest.exists()


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real data set not at ../shared/data/brain-tumor-mri")
def test_expected_constant_matches_real_data() -> None:
    from braintumor.data.download import DATASET_EXPECTED

    assert count_images(REAL_DATA) == DATASET_EXPECTED["counts"]
    assert manifest_hash(REAL_DATA) == DATASET_EXPECTED["manifest"]


def _zip_with(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("case, message", [
    ("bomb", "times its packed size (limit 100), like a zip bomb"),
    ("too-big", "would unpack to 3 MiB, more than the limit of 2 MiB"),
    ("no-space", "not enough free space"),
    ("file-and-folder", "'x/Training' is both a file and a folder"),
    ("twice", "'x/a.jpg' appears twice"),
])
def test_hostile_archives_stop_before_writing(synthetic: tuple[Path, Path, dict], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, case: str, message: str) -> None:
    _, _, expected = synthetic
    archive = tmp_path / f"{case}.zip"
    limits: dict = {"max_bytes": 2 << 20}
    if case == "bomb":  # 8 MiB of zeros packs to a few KiB
        _zip_with(archive, {"x/Training/glioma_tumor/a.jpg": bytes(8 << 20)})
        limits = {}
    elif case == "too-big":
        _zip_with(archive, {f"x/Training/glioma_tumor/{i}.jpg": os.urandom(1 << 20) for i in range(3)},
                  compression=zipfile.ZIP_STORED)
    elif case == "no-space":  # a disk with 100 MiB free: less than the archive plus the safety margin
        _zip_with(archive, {"x/Training/glioma_tumor/a.jpg": os.urandom(1 << 20)}, compression=zipfile.ZIP_STORED)
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100 << 20))
    elif case == "file-and-folder":
        _zip_with(archive, {"x/Training": b"a file", "x/Training/glioma_tumor/a.jpg": b"jpg"})
    else:
        with zipfile.ZipFile(archive, "w") as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is told to write
            zf.writestr("x/a.jpg", b"one")
            zf.writestr("x/a.jpg", b"two")
    dest = tmp_path / "out/brain-tumor-mri"
    with pytest.raises(UserError, match=re.escape(message)) as err:
        download(dest, archive=archive, expected=expected, **limits)
    assert "\n" not in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []  # nothing extracted, no temp folder left

