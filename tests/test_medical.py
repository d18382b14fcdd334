"""DICOM and NIfTI input through the one decoder, on the real files pydicom and nibabel ship: one windowing policy,
MR only, volumes as slice rows plus a summary row, skipped files with one-line reasons, no patient data in any
output, and a clear reason where the extra braintumor[medical] is not installed."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from braintumor.cli import main
from braintumor.data import medical
from braintumor.data.decode import decode_image, decode_scan

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402  (after the skip: only with the extra)

# the lossless encodings of one MR slice that pydicom ships in its package (no download)
MR_SMALL = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
            "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"]
NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
ANATOMICAL = NIBABEL_DATA / "anatomical.nii"  # 33 x 41 x 25, no cal_min/cal_max
EXAMPLE_4D = NIBABEL_DATA / "example4d.nii.gz"  # 128 x 96 x 24 x 2, cal_min/cal_max 0/1162
NICOM_DATA = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"  # nibabel's DICOM test files
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _dicom(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def _series(folder: Path) -> Path:
    """A folder holding one DICOM series: MR_small at three positions along its normal, written in reverse order, the
    second and third slice flipped."""
    folder.mkdir(parents=True)
    source = pydicom.dcmread(_dicom("MR_small.dcm"))
    normal = np.cross(np.array(source.ImageOrientationPatient[:3], float), source.ImageOrientationPatient[3:])
    pixels = source.pixel_array
    for n, stored in enumerate((pixels, pixels[::-1], pixels[:, ::-1])):
        source.ImagePositionPatient = [float(v) for v in np.array(source.ImagePositionPatient, float) + normal]
        source.InstanceNumber = n + 1
        source.PixelData = np.ascontiguousarray(stored).tobytes()
        source.save_as(folder / f"slice{2 - n}.dcm")
    return folder


def _predict(capsys, run: Path, *args: str) -> tuple[list[dict], str]:
    assert main(["predict", "--run", str(run), *args, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _probabilities(row: dict) -> np.ndarray:
    return np.array(list(row["probabilities"].values()))


def test_every_lossless_encoding_of_mr_small_gives_the_same_image_and_probabilities(trained_run, capsys):
    files = [_dicom(name) for name in MR_SMALL]
    images = [decode_image(file, 32, []) for file in files]
    assert all(np.array_equal(image, images[0]) for image in images)
    assert 0 < images[0].mean() < 255  # the file's window (600/1600) leaves gray levels, not a blank
    rows, err = _predict(capsys, trained_run, *map(str, files))
    assert [row["file"] for row in rows] == [str(file) for file in files] and err == ""
    assert {row["window"] for row in rows} == {"voi 600/1600"}
    # the same pixels in other rows of one batch: equal but for oneDNN's per-row float noise (measured <= 3e-10)
    assert all(np.allclose(_probabilities(row), _probabilities(rows[0]), rtol=0, atol=1e-7) for row in rows)


def test_truncated_and_ct_files_are_skipped_with_one_line_each(trained_run, capsys):
    good, truncated, ct = _dicom("MR_small.dcm"), _dicom("MR_truncated.dcm"), _dicom("CT_small.dcm")
    rows, err = _predict(capsys, trained_run, str(good), str(truncated), str(ct))
    assert [row["file"] for row in rows] == [str(good)]
    lines = err.strip().splitlines()
    assert lines == [f"skipped {truncated}: {lines[0].split(': ', 1)[1]}", f"skipped {ct}: modality CT, not MR"]
    assert "pixel data cannot be decoded" in lines[0]
    assert main(["predict", "--run", str(trained_run), str(truncated), str(ct)]) == 2
    assert "none of the 2 file(s) could be read" in capsys.readouterr().err


def test_a_nifti_volume_gives_a_row_per_slice_and_a_summary_row(trained_run, capsys):
    rows, _ = _predict(capsys, trained_run, str(ANATOMICAL), "--slices", "all")
    assert [row["file"] for row in rows] == [f"{ANATOMICAL}#slice={n}" for n in range(25)] + [str(ANATOMICAL)]
    summary = rows[-1]
    assert summary["slices"] == 25 and summary["empty_slices"] == 0
    assert summary["window"] == "percentile 0.5-99.5" and summary["orientation"] == "axial"
    assert np.allclose(_probabilities(summary), np.mean([_probabilities(row) for row in rows[:-1]], axis=0))
    middle, _ = _predict(capsys, trained_run, str(ANATOMICAL), str(EXAMPLE_4D))  # --slices middle, the default
    assert [row["file"] for row in middle] == [f"{ANATOMICAL}#slice=12", str(ANATOMICAL),
                                               f"{EXAMPLE_4D}#slice=12", str(EXAMPLE_4D)]
    assert np.allclose(_probabilities(middle[0]), _probabilities(rows[12]), atol=1e-6)  # another batch: float noise
    assert middle[2]["window"] == "cal_min/cal_max 0/1162"


def test_axial_slices_of_the_canonical_orientation(tmp_path):
    """The same volume stored in another orientation gives the same slices (nibabel's closest canonical)."""
    image = nibabel.load(ANATOMICAL)
    flipped = image.slicer[::-1, :, ::-1]  # other voxel order, same anatomy (the affine follows)
    nibabel.save(flipped, tmp_path / "flipped.nii")
    original, other = (medical.read_scan(path).slices for path in (ANATOMICAL, tmp_path / "flipped.nii"))
    assert original.shape == (25, 41, 33) and np.array_equal(original, other)


def test_near_empty_slices_are_skipped_and_counted(trained_run, tmp_path, capsys):
    image = nibabel.load(ANATOMICAL)
    padded = np.pad(np.asanyarray(image.dataobj), ((0, 0), (0, 0), (3, 0)), constant_values=-610)  # its minimum
    path = tmp_path / "padded.nii.gz"
    nibabel.save(nibabel.Nifti1Image(padded, image.affine), path)
    rows, _ = _predict(capsys, trained_run, str(path), "--slices", "all")
    assert rows[0]["file"] == f"{path}#slice=3" and len(rows) == 26
    assert rows[-1]["slices"] == 25 and rows[-1]["empty_slices"] == 3


def test_a_folder_of_dicom_files_and_a_folder_holding_one_series(trained_run, tmp_path, capsys):
    copies = tmp_path / "encodings"  # one slice in several encodings: separate files, not a volume
    copies.mkdir()
    for name in MR_SMALL[:3]:
        shutil.copy(_dicom(name), copies / name)
    rows, _ = _predict(capsys, trained_run, str(copies))
    assert [row["file"] for row in rows] == [str(copies / name) for name in sorted(MR_SMALL[:3])]
    series = _series(tmp_path / "series")
    slices = medical.read_scan(series).slices  # in position order, not file-name order
    one = medical.read_scan(_dicom("MR_small.dcm")).slices[0]
    assert [np.array_equal(a, b) for a, b in zip(slices, (one, one[::-1], one[:, ::-1]), strict=True)] == [True] * 3
    assert medical.read_scan(series).orientation == "axial"  # an axial series: reoriented, but nothing changes
    rows, _ = _predict(capsys, trained_run, str(series), "--slices", "all", "--gradcam", str(tmp_path / "cams"))
    assert [row["file"] for row in rows] == [f"{series}#slice={n}" for n in range(3)] + [str(series)]
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == [f"series.slice-{n}.png" for n in range(3)]


def test_a_multi_frame_dicom_is_a_volume(tmp_path):
    source = pydicom.dcmread(_dicom("MR_small.dcm"))
    frames = np.stack([source.pixel_array, source.pixel_array[::-1], source.pixel_array[:, ::-1]])
    source.NumberOfFrames = 3
    source.PixelData = frames.tobytes()
    source.save_as(tmp_path / "frames.dcm")
    scan = medical.read_scan(tmp_path / "frames.dcm")
    assert scan.volume and scan.window == "voi 600/1600"
    assert scan.orientation == medical.NO_GEOMETRY  # a legacy multi-frame file: one position for all its frames
    assert np.array_equal(scan.slices[1], medical.read_scan(_dicom("MR_small.dcm")).slices[0][::-1])
    decoded = decode_scan(tmp_path / "frames.dcm", 32, [], "all")
    assert [n for n, _ in decoded.images] == [0, 1, 2]


@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")  # nibabel's, on import
def test_a_sagittal_enhanced_multi_frame_dicom_is_cut_into_axial_slices(tmp_path):
    """nibabel's Philips MPRAGE (enhanced MR, geometry in its functional groups): 176 sagittal frames of 256 x 256
    whose rows run from the top of the head to the feet. nibabel's copy has blank pixels: they are filled with
    noise, a bright top row in every frame and a bright frame at the patient's right."""
    from nibabel.nicom import dicomwrappers

    source = pydicom.dcmread(gzip.open(NICOM_DATA / "philips_mprage.dcm.gz"))
    frames = np.random.default_rng(0).integers(0, 1000, (176, 256, 256), dtype=np.uint16)
    frames[:, 0, :] = 4000  # row 0: the column direction points to the feet, so this is the top of the head
    lps_x = [frame.PlanePositionSequence[0].ImagePositionPatient[0]
             for frame in source.PerFrameFunctionalGroupsSequence]
    frames[int(np.argmin(lps_x))] = 4000  # DICOM's x points to the patient's left: the lowest x is the right
    source.PixelData = frames.tobytes()
    for k, frame in enumerate(source.PerFrameFunctionalGroupsSequence):  # each frame's own rescale and window
        frame.PixelValueTransformationSequence[0].RescaleSlope = 2.0 if k < 88 else 1.0
        frame.FrameVOILUTSequence[0].WindowCenter, frame.FrameVOILUTSequence[0].WindowWidth = 2000, 3000
    source.save_as(tmp_path / "mprage.dcm")
    scan = medical.read_scan(tmp_path / "mprage.dcm")
    assert scan.orientation == "axial (reoriented from sagittal)" and scan.window == "voi 2000/3000"
    assert scan.slices.shape == (256, 256, 176)  # a slice per row (head to foot), each anterior-posterior x right-left
    assert (scan.slices == 255).all(axis=(1, 2)).tolist() == [False] * 255 + [True]  # the top of the head is last
    assert (scan.slices[:, :, 0] == 255).all() and not (scan.slices[:, :, 1] == 255).all()  # the right, on the left
    # the same volume as nibabel reads it (its DICOM affine turned to RAS), through the NIfTI path
    wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(tmp_path / "mprage.dcm"))
    slopes = np.array([2.0 if k < 88 else 1.0 for k in range(176)])[wrapper.frame_order]  # nibabel's frame order
    values = wrapper.get_unscaled_data() * slopes  # (nibabel's get_data prefers Philips' real-world value maps)
    volume = nibabel.Nifti1Image(values, LPS_TO_RAS @ wrapper.affine)
    volume.header["cal_min"], volume.header["cal_max"] = 500, 3500  # the frames' window 2000/3000
    nibabel.save(volume, tmp_path / "mprage.nii")
    assert np.array_equal(medical.read_scan(tmp_path / "mprage.nii").slices, scan.slices)


def test_a_sagittal_series_in_any_file_order_is_cut_into_axial_slices(tmp_path):
    """nibabel's slicethickness_empty_string.dcm, a real oblique sagittal MR slice (rows run from head to foot), made
    a series of 5 slices 2 mm apart along its normal, stored under file names in two orders."""
    source = pydicom.dcmread(NICOM_DATA / "slicethickness_empty_string.dcm")
    source.decompress()  # JPEG 2000 → raw pixels, so each slice can get its own
    del source.WindowCenter, source.WindowWidth  # the percentile window, as the NIfTI copy below gets
    orientation = np.array(source.ImageOrientationPatient, float)
    normal, start = np.cross(orientation[:3], orientation[3:]), np.array(source.ImagePositionPatient, float)
    slices = [np.roll(source.pixel_array, 40 * n, axis=1) for n in range(5)]
    for folder, names in (("a", [0, 1, 2, 3, 4]), ("b", [3, 0, 4, 2, 1])):
        (tmp_path / folder).mkdir()
        for n, name in enumerate(names):
            source.ImagePositionPatient = [float(v) for v in start + 2.0 * n * normal]
            source.PixelData = slices[n].tobytes()
            source.save_as(tmp_path / folder / f"file{name}.dcm")
    scan = medical.read_scan(tmp_path / "a")
    assert scan.orientation == "axial (reoriented from sagittal)"
    assert scan.slices.shape == (384, 384, 5)  # a slice per row (head to foot), each anterior-posterior x 5 slices
    assert np.array_equal(medical.read_scan(tmp_path / "b").slices, scan.slices)
    # nibabel's canonical reorientation of the volume with its affine built by hand: array axes (row, column, slice)
    # step along the column direction, the row direction and the normal (PixelSpacing is row, then column spacing)
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack([orientation[3:] * float(source.PixelSpacing[0]),
                                      orientation[:3] * float(source.PixelSpacing[1]), 2.0 * normal])
    affine[:3, 3] = start
    nibabel.save(nibabel.Nifti1Image(np.stack(slices, axis=-1), LPS_TO_RAS @ affine), tmp_path / "series.nii")
    assert np.array_equal(medical.read_scan(tmp_path / "series.nii").slices, scan.slices)


def test_sizes_are_bounded_before_the_pixels_are_read(monkeypatch):
    monkeypatch.setattr(medical, "MAX_VOXELS", 1000)
    for path in (ANATOMICAL, _dicom("MR_small.dcm")):
        with pytest.raises(medical.ScanRefused, match="the limits are"):
            medical.read_scan(path)


def test_no_patient_data_in_any_output(trained_run, tmp_path, capsys):
    source = pydicom.dcmread(_dicom("MR_small.dcm"))
    private = [str(source.get(key)) for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                                                "StudyDate", "InstitutionName", "StudyInstanceUID",
                                                "SeriesInstanceUID", "SOPInstanceUID")]
    private = [value for value in private if value not in ("", "None")]
    assert len(private) >= 6  # the real file has these fields filled
    inputs = [str(_dicom(name)) for name in MR_SMALL[:2]]
    captured = []
    for args in ([], ["--json"], ["--csv", str(tmp_path / "p.csv"), "--gradcam", str(tmp_path / "cams")]):
        assert main(["predict", "--run", str(trained_run), *inputs, *args]) == 0
        out = capsys.readouterr()
        captured += [out.out, out.err]
    written = [path.read_bytes().decode("latin-1") for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) == 3  # the CSV and two Grad-CAM PNGs
    for text in captured + written:
        for value in private:
            assert value not in text


def test_without_the_extra_a_scan_is_skipped_with_the_install_hint(trained_run, tmp_path, monkeypatch, capsys):
    for name in ("pydicom", "nibabel"):
        monkeypatch.setitem(sys.modules, name, None)  # `import pydicom` raises ImportError, as when not installed
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in MR_SMALL[:2]:
        shutil.copy(_dicom(name), folder / name)
    assert main(["predict", "--run", str(trained_run), str(folder), str(ANATOMICAL)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all("install braintumor[medical]" in line for line in err[:3])
    assert "none of the 3 file(s)" in err[3]


def test_audit_and_training_data_read_scans_through_the_same_decoder(tmp_path, write_config, synth_root):
    from braintumor.core.config import load_config
    from braintumor.data.audit import run_audit
    from braintumor.data.dataset import load_split

    root = tmp_path / "scans"
    for split in ("Training", "Testing"):
        for label, files in (("a", [_dicom("MR_small.dcm"), ANATOMICAL]), ("b", [_dicom("CT_small.dcm"), EXAMPLE_4D])):
            (root / split / label).mkdir(parents=True)
            for file in files:
                shutil.copy(file, root / split / label / file.name)
    report = run_audit(root, out_dir=tmp_path / "audit")
    assert report["problem_files"]["unreadable"] == [f"{split}/b/CT_small.dcm: modality CT, not MR"
                                                        for split in ("Training", "Testing")]
    cfg = load_config(write_config(data={"root": str(root), "image_size": 32, "cache_dir": str(tmp_path / "cache")}))
    split, on_disk, skipped, _ = load_split(cfg.data, "Training", ["a", "b"])
    assert on_disk == {"a": 2, "b": 2}
    assert skipped == [{"file": "Training/b/CT_small.dcm", "reason": "modality CT, not MR"}]
    assert np.array_equal(split.images[0], decode_image(root / "Training" / "a" / "MR_small.dcm", 32, []))


def test_adapt_reads_a_site_of_scans_as_predict_does_and_every_slice_on_request(trained_run, tmp_path, caplog):
    """A new site's scans, as a hospital would pass them: a NIfTI volume, a folder holding one DICOM series (one
    volume, windowed as a whole, as predict reads it) and a single DICOM slice."""
    site = tmp_path / "site"
    _series(site / "series")
    shutil.copy(ANATOMICAL, site / "anatomical.nii")
    shutil.copy(_dicom("MR_small.dcm"), site / "single.dcm")
    middle, every = tmp_path / "middle", tmp_path / "every"
    assert main(["adapt", "--run", str(trained_run), "--data", str(site), "--out", str(middle)]) == 0
    provenance = json.loads((middle / "adaptation.json").read_text())
    assert provenance["images_found"] == provenance["files"] == provenance["images"] == 3  # a middle slice a volume
    assert "2 volume(s) gave their middle slice only; --slices all takes every slice" in caplog.text

    assert main(["adapt", "--run", str(trained_run), "--data", str(site), "--out", str(every), "--slices", "all",
                 "--max-images", "10"]) == 0
    provenance = json.loads((every / "adaptation.json").read_text())
    assert provenance["slices"] == "all" and provenance["files"] == 3 and not provenance["skipped"]
    assert provenance["images_given"] == 25 + 3 + 1  # anatomical's 25 axial slices, the series' 3, the single one ...
    assert provenance["images"] == 10  # ... of which --max-images draws 10
    means = [[np.asarray(variable) for variable in keras.models.load_model(run / "model.keras", compile=False).weights
              if variable.path.endswith("moving_mean")] for run in (middle, every)]
    assert not any(np.allclose(a, b) for a, b in zip(*means, strict=True))  # the slices made the statistics
