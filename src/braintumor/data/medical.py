"""DICOM and NIfTI scans → windowed 8-bit gray slices (with the optional extra braintumor[medical]).

The windowing policy, the one way a scan's values become the gray levels the model sees (each result
records which window it used):
1. values: DICOM stored values × RescaleSlope + RescaleIntercept (of an enhanced multi-frame file, each frame's
   own, from its functional groups); NIfTI values with scl_slope/scl_inter applied (by nibabel). Non-finite
   values count as 0.
2. window [low, high]: the file's own display window where it has one — DICOM WindowCenter C and WindowWidth W
   (the first pair where several are given; of an enhanced multi-frame file, the first frame's), low = C - W/2,
   high = C + W/2, recorded as `voi C/W`; NIfTI cal_min/cal_max where cal_max > cal_min, recorded as
   `cal_min/cal_max LOW/HIGH`. Otherwise the 0.5th and 99.5th percentiles of all the file's values (of the whole
   volume, so its slices share one window), recorded as `percentile 0.5-99.5`.
3. gray = round(255 × clip((value - low) / (high - low), 0, 1)); MONOCHROME1 (low values shown white) is
   inverted to 255 - gray.

Slices: a 2-D DICOM is one image. Every volume (a NIfTI file, of a 4-D one its first volume; an enhanced
multi-frame DICOM; a folder holding one DICOM series, its files ordered along the slice normal) goes through
`_axial`: reoriented to the closest canonical (RAS+) orientation, without resampling, and cut into axial slices
shown as viewers show them: anterior at the top, the patient's right on the left. A DICOM volume's affine comes
from its geometry (ImageOrientationPatient, PixelSpacing, ImagePositionPatient of each slice or frame, read by
nibabel's DICOM wrappers), turned from DICOM's LPS into RAS. A DICOM volume without usable geometry (a legacy
multi-frame file, a series ordered by InstanceNumber) keeps its stored order, cut along the acquisition plane.
Each volume records how it was cut (`orientation`). Only DICOM of Modality MR is read; any other is refused with
its modality, and no header value but the window and the orientation ever leaves this module.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from braintumor.core.errors import describe
from braintumor.data.files import walk

INSTALL = "reading DICOM and NIfTI needs pydicom and nibabel: install braintumor[medical]"
MAX_SLICES = 1024  # slices or frames of one scan
MAX_VOXELS = 2**26  # 64 Mi values (512 × 512 × 256), about 0.5 GB as float64, checked from the header
PERCENTILES = (0.5, 99.5)  # the window of a file without one of its own
SIGNAL_LEVEL = 26  # a windowed gray level above 10 % of 255 counts as signal, below as background
MIN_SIGNAL = 0.02  # a slice of a volume with signal in fewer of its pixels holds no brain and is skipped
SLICES = ("middle", "all")  # which slices of a volume are classified (predict --slices)
PLANES = ("sagittal", "coronal", "axial")  # the plane of slices stacked along the RAS axis x, y or z
NO_GEOMETRY = "acquisition plane (no geometry)"  # a DICOM volume whose slices' positions in the patient are unknown
RESCALE, VOI = "PixelValueTransformationSequence", "FrameVOILUTSequence"  # enhanced multi-frame functional groups
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM's patient axes point left and posterior, NIfTI's right, anterior


class ScanRefused(ValueError):
    """A scan that cannot be read or is not one to classify; the message is the whole one-line reason."""


@dataclass(frozen=True)
class Scan:
    slices: np.ndarray  # (n, height, width) uint8 gray, windowed
    window: str  # which window made the gray levels, e.g. "voi 600/1600"
    orientation: str | None = None  # how a volume was cut, e.g. "axial (reoriented from sagittal)"; None: one 2-D image

    @property
    def volume(self) -> bool:
        """Several slices (NIfTI, multi-frame DICOM, a series), not one 2-D DICOM image."""
        return self.orientation is not None

    @property
    def middle(self) -> int:
        """The slice that stands for the scan where one file is one image (training, the demo, the audit)."""
        return len(self.slices) // 2


def _pydicom():
    try:
        import pydicom
    except ImportError as err:
        raise ScanRefused(INSTALL) from err
    # pydicom warns and logs about odd header values by quoting them; no header value may reach our log
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    return pydicom


def _nibabel():
    try:
        import nibabel
    except ImportError as err:
        raise ScanRefused(INSTALL) from err
    return nibabel


def _dicomwrappers():
    nibabel = _nibabel()
    with warnings.catch_warnings():  # nibabel warns on import that its DICOM readers are experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers
    return nibabel, dicomwrappers


def _check_size(slices: int, voxels: int) -> None:
    if slices > MAX_SLICES or voxels > MAX_VOXELS:
        raise ScanRefused(f"{slices} slices of {voxels} values in all; the limits are {MAX_SLICES} slices and "
                          f"{MAX_VOXELS} values")


def _read_dicom(path: Path, pixels: bool = True):
    pydicom = _pydicom()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=not pixels, defer_size="1 MB")
        except pydicom.errors.InvalidDicomError as err:
            raise ScanRefused("not a DICOM file (no DICM header)") from err
        except Exception as err:  # noqa: BLE001  (a damaged header raises anything from pydicom)
            raise ScanRefused(f"unreadable DICOM header ({type(err).__name__})") from err


def _checked_mr(ds) -> None:
    modality = str(ds.get("Modality", "") or "missing")
    if modality != "MR":
        raise ScanRefused(f"modality {modality}, not MR")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ScanRefused(f"photometric interpretation {photometric or 'missing'}, not a grayscale MR image")
    if "PixelData" not in ds:
        raise ScanRefused("no pixel data")


def _dicom_values(ds) -> np.ndarray:
    """(frames, rows, columns) float64 values with the rescale applied, the size checked before decoding."""
    rows, columns, frames = int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), int(ds.get("NumberOfFrames", 1) or 1)
    _check_size(frames, rows * columns * frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            stored = ds.pixel_array
        except Exception as err:  # noqa: BLE001  (truncated data or a codec missing: pydicom raises many types)
            raise ScanRefused(f"pixel data cannot be decoded ({describe(err)})") from err
    stored = stored.reshape(-1, rows, columns).astype(np.float64)
    slope = np.array([float(_attribute(ds, "RescaleSlope", RESCALE, k) or 1) for k in range(len(stored))])
    intercept = np.array([float(_attribute(ds, "RescaleIntercept", RESCALE, k) or 0) for k in range(len(stored))])
    return stored * slope[:, None, None] + intercept[:, None, None]


def _attribute(ds, keyword: str, macro: str, frame: int = 0):
    """`keyword` at the top level of `ds`, else where an enhanced multi-frame file keeps it: in the functional group
    `macro` shared by all frames, else in frame `frame`'s own; None if nowhere."""
    if ds.get(keyword) is not None:
        return ds.get(keyword)
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for group in (shared, per_frame[frame] if frame < len(per_frame) else None):
        items = group.get(macro) if group is not None else None
        if items and items[0].get(keyword) is not None:
            return items[0].get(keyword)
    return None


def _first(value) -> float:
    """A DICOM number, or the first of several (pydicom gives a MultiValue for several)."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _voi(ds) -> tuple[float, float, str] | None:
    """The file's own window (of an enhanced multi-frame file, its first frame's), or None."""
    center, width = _attribute(ds, "WindowCenter", VOI), _attribute(ds, "WindowWidth", VOI)
    if center is None or width is None:
        return None
    center, width = _first(center), _first(width)
    if not width > 0:
        return None
    return center - width / 2, center + width / 2, f"voi {center:g}/{width:g}"


def _windowed(values: np.ndarray, window: tuple[float, float, str] | None, inverted: bool) -> tuple[np.ndarray, str]:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if window is None:
        low, high = np.percentile(values, PERCENTILES)
        window = float(low), float(high), f"percentile {PERCENTILES[0]:g}-{PERCENTILES[1]:g}"
    low, high, label = window
    gray = np.round(255 * np.clip((values - low) / max(high - low, 1e-12), 0, 1)).astype(np.uint8)
    return (255 - gray if inverted else gray), label


def _axial(image) -> tuple[np.ndarray, str]:
    """A 3-D volume (a nibabel image, its affine in RAS) as (n, height, width) values: reoriented to the closest
    canonical orientation and cut into axial slices as viewers show them; and how it was cut. NIfTI and DICOM
    volumes both come here."""
    nibabel = _nibabel()
    axes = nibabel.io_orientation(image.affine)[:, 0]  # per stored axis, the RAS axis it runs along (NaN: none)
    if 2 not in axes:
        raise ScanRefused("the volume's affine has no superior-inferior axis")
    _check_size(image.shape[int(np.flatnonzero(axes == 2)[0])], int(np.prod(image.shape, dtype=np.int64)))
    try:
        values = np.asarray(nibabel.as_closest_canonical(image).dataobj, np.float64)
    except Exception as err:  # noqa: BLE001  (truncated or corrupt data)
        raise ScanRefused(f"volume data cannot be read ({describe(err)})") from err
    plane = PLANES[int(axes[2])]  # the plane of the stored slices
    # RAS+ (x to the right, y to the front): slice k as an image is values[:, :, k] transposed to (y, x), with
    # y flipped (anterior at the top) and x flipped (the patient's right on the left), as viewers show it
    return (np.transpose(values[::-1, ::-1, :], (2, 1, 0)),
            "axial" if plane == "axial" else f"axial (reoriented from {plane})")


def _dicom_volume(values: np.ndarray, affine: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(slices, rows, columns) DICOM values ordered along the slice normal, with the volume's affine in DICOM's LPS
    (None: no usable geometry) → axial slices by `_axial`, or the stored slices."""
    if affine is None:
        return values, NO_GEOMETRY
    return _axial(_nibabel().Nifti1Image(np.transpose(values, (1, 2, 0)), LPS_TO_RAS @ affine))


def _frames_geometry(ds, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Of an enhanced multi-frame DICOM (its geometry in Shared/PerFrameFunctionalGroupsSequence), the order of its
    frames along the slice normal and the volume's affine (LPS), as nibabel's wrapper reads them; None where the
    file has no usable geometry (a legacy multi-frame file, one position for several frames, several stacks)."""
    _, dicomwrappers = _dicomwrappers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wrapper = dicomwrappers.wrapper_from_data(ds)
            if (not wrapper.is_multiframe or len(wrapper.frames) != frames or len(wrapper.image_shape) != 3
                    or not wrapper.voxel_sizes[2] > 0):  # frames dropped by its filters, a 4-D file, a reversed step
                return None
            return np.asarray(wrapper.frame_order), wrapper.affine
        except Exception:  # noqa: BLE001  (a header without the geometry raises many types from nibabel)
            return None


def _series_geometry(headers: list) -> np.ndarray | None:
    """The affine (LPS) of a series' slices ordered along their normal: the first slice's own (nibabel reads its
    ImageOrientationPatient, PixelSpacing and ImagePositionPatient) with the mean step between the slices'
    positions; None where a slice lacks them or the slices are not parallel."""
    _, dicomwrappers = _dicomwrappers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # the plain wrapper: a Siemens mosaic file stays one slice here, as it is one slice of the series
            slices = [dicomwrappers.Wrapper(ds) for ds in headers]
            affine = slices[0].affine
            if not all(np.allclose(w.rotation_matrix, slices[0].rotation_matrix, atol=1e-4) for w in slices):
                return None
            affine[:3, 2] = (slices[-1].image_position - slices[0].image_position) / (len(slices) - 1)
            return affine
        except Exception:  # noqa: BLE001  (missing or malformed geometry raises many types from nibabel)
            return None


def _dicom_scan(path: Path) -> Scan:
    ds = _read_dicom(path)
    _checked_mr(ds)
    values, orientation = _dicom_values(ds), None
    if len(values) > 1:
        order, affine = _frames_geometry(ds, len(values)) or (np.arange(len(values)), None)
        values, orientation = _dicom_volume(values[order], affine)
    gray, label = _windowed(values, _voi(ds), ds.PhotometricInterpretation == "MONOCHROME1")
    return Scan(gray, label, orientation)


def _position(ds) -> float | None:
    """Where the slice lies along its normal (the cross product of its row and column directions)."""
    orientation, position = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if orientation is None or position is None or len(orientation) != 6 or len(position) != 3:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, float)))


def _series_order(headers: list) -> list[int] | None:
    """The order of the files along the series, or None if they are not the distinct slices of one series."""
    if len(headers) < 2 or len({str(ds.get("SeriesInstanceUID", "")) for ds in headers}) != 1:
        return None
    keys = [_position(ds) for ds in headers]
    if None in keys:
        keys = [ds.get("InstanceNumber") for ds in headers]
        if None in keys:
            return None
        keys = [int(key) for key in keys]
    if len(set(keys)) != len(keys):  # copies of one slice (a file in several encodings) are no volume
        return None
    return sorted(range(len(headers)), key=keys.__getitem__)


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in `folder` (by the .dcm extension), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(".dcm")
                  and not p.name.startswith("."))


def is_series(folder: Path) -> bool:
    """Whether `folder` holds only image files, at least two, all DICOM slices of one series at distinct positions."""
    files = dicom_files(folder)
    if len(files) < 2 or len(files) != len(walk(folder)[0]):
        return False
    if len(files) > MAX_SLICES:
        return False
    try:
        return _series_order([_read_dicom(path, pixels=False) for path in files]) is not None
    except ScanRefused:
        return False


def group_series(files: list[Path]) -> list[Path]:
    """`files` (a walk's image files, sorted), with the files of each folder holding one DICOM series replaced by
    that folder, in the place of its first file: one volume. Without pydicom no folder is a series."""
    grouped, series = [], {}
    for file in files:
        folder = file.parent
        if file.name.lower().endswith(".dcm"):
            if folder not in series:
                series[folder] = is_series(folder)
                if series[folder]:
                    grouped.append(folder)
            if series[folder]:
                continue
        grouped.append(file)
    return grouped


def _series_scan(folder: Path) -> Scan:
    files = dicom_files(folder)
    _check_size(len(files), 0)
    headers = [_read_dicom(path) for path in files]
    order = _series_order(headers)
    if order is None:
        raise ScanRefused("not one DICOM series (files of several series, or of the same position)")
    headers = [headers[i] for i in order]
    for ds in headers:
        _checked_mr(ds)
    rows, columns = int(headers[0].get("Rows", 0)), int(headers[0].get("Columns", 0))
    _check_size(len(headers), rows * columns * len(headers))
    values = [_dicom_values(ds) for ds in headers]
    if any(v.shape[1:] != values[0].shape[1:] for v in values):
        raise ScanRefused("the slices of the series differ in size")
    volume, orientation = _dicom_volume(np.concatenate(values), _series_geometry(headers))
    gray, label = _windowed(volume, _voi(headers[0]), headers[0].PhotometricInterpretation == "MONOCHROME1")
    return Scan(gray, label, orientation)


def _nifti_scan(path: Path) -> Scan:
    nibabel = _nibabel()
    try:
        image = nibabel.load(path)
    except Exception as err:  # noqa: BLE001  (nibabel raises many types for damaged files)
        raise ScanRefused(f"unreadable NIfTI ({describe(err)})") from err
    if len(image.shape) not in (3, 4):
        raise ScanRefused(f"a {len(image.shape)}-D NIfTI; only 3-D and 4-D volumes are read")
    low, high = float(image.header["cal_min"]), float(image.header["cal_max"])
    window = (low, high, f"cal_min/cal_max {low:g}/{high:g}") if high > low else None
    values, orientation = _axial(image.slicer[..., 0] if len(image.shape) == 4 else image)  # 4-D: the first volume
    gray, label = _windowed(values, window, inverted=False)
    return Scan(gray, label, orientation)


def read_scan(path: Path) -> Scan:
    """A DICOM file, a folder holding one DICOM series, or a NIfTI file as windowed gray slices; ScanRefused
    with the reason otherwise."""
    if path.is_dir():
        return _series_scan(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return _nifti_scan(path)
    return _dicom_scan(path)


def has_signal(gray: np.ndarray) -> bool:
    """Whether a windowed slice shows anything: at least MIN_SIGNAL of its pixels above SIGNAL_LEVEL."""
    return float((gray > SIGNAL_LEVEL).mean()) >= MIN_SIGNAL
