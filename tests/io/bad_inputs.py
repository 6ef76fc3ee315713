"""A corpus of odd and broken inputs derived from real studies, each with the outcome ctriage must give.

Nothing here is committed data: every case is written into a test's temporary folder from

- ``dicom``: the 20-slice TotalSegmentator DICOM series (512 x 512, 2 mm apart, 3 mm thick), stored once
  uncompressed (:func:`native_series`) so that cases load fast; a few cases keep its JPEG 2000 files;
- ``nifti``: TotalSegmentator's ``example_ct_sm.nii.gz`` (30 slices of 3 mm, 101 x 122 voxels of 3 mm).

An outcome is ``same`` (the HU volume equals the plain study's exactly, spacing within 1e-6 mm), ``warning``
(same as ``same`` or a derived volume, plus a warning containing ``text``), or ``error`` (an
:class:`~ctriage.io.InputError` of the given type whose message contains ``text``). Header fuzzing drops or
corrupts each tag the loader reads, on one slice and on every slice.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ctriage.io import errors

Make = Callable[[Path, Path], Path]  # (base study, empty case folder) -> the path to load


@dataclass(frozen=True)
class Case:
    """One input and the outcome expected from loading it."""

    name: str
    base: str  # "dicom", "dicom_j2k" (the original JPEG 2000 files) or "nifti"
    make: Make
    outcome: str  # "same", "warning" or "error"
    text: str = ""  # part of the warning or error message
    error: type[errors.InputError] | None = None


FUZZED_SLICE = 7  # index, in file-name order, of the slice a one-slice mutation changes (not the first)


def native_series(source: Path, folder: Path) -> Path:
    """Write the DICOM series ``source`` uncompressed (Explicit VR Little Endian) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.decompress()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{path.name}.dcm", enforce_file_format=True)
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm")) or sorted(p for p in folder.iterdir() if p.is_file())


def _copy(base: Path, out: Path) -> Path:
    shutil.copytree(base, out / "series")
    return out / "series"


def _edit(change: Callable[[Dataset, int], None], which: str = "one") -> Make:
    """A case maker that applies ``change(ds, index)`` to one slice (``FUZZED_SLICE``) or every slice."""

    def make(base: Path, out: Path) -> Path:
        folder = _copy(base, out)
        for index, path in enumerate(_files(folder)):
            if which == "all" or index == FUZZED_SLICE:
                ds = pydicom.dcmread(path)
                change(ds, index)
                ds.save_as(path, enforce_file_format=False)
        return folder

    return make


def _drop(tag: str) -> Callable[[Dataset, int], None]:
    def change(ds: Dataset, index: int) -> None:
        if tag in ds:
            delattr(ds, tag)
        elif tag in ds.file_meta:
            delattr(ds.file_meta, tag)

    return change


def _set(tag: str, value: object) -> Callable[[Dataset, int], None]:
    def change(ds: Dataset, index: int) -> None:
        setattr(ds, tag, value)

    return change


def _set_raw(tag: str, value: bytes) -> Callable[[Dataset, int], None]:
    """Store ``value`` as the tag's raw bytes (a value pydicom would refuse to write), VR kept."""

    def change(ds: Dataset, index: int) -> None:
        element = ds[tag]
        ds[tag] = pydicom.dataelem.RawDataElement(element.tag, element.VR, len(value), value, 0, False, True)

    return change


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _cut_one(keep: float) -> Make:
    def make(base: Path, out: Path) -> Path:
        folder = _copy(base, out)
        _cut(_files(folder)[FUZZED_SLICE], keep)
        return folder

    return make


def _scale_z(factor: float) -> Callable[[Dataset, int], None]:
    def change(ds: Dataset, index: int) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z * factor]

    return change


def _with_localizer(name: str) -> Make:
    """The series plus a coronal localizer image in the same series, saved under ``name`` (file order)."""

    def make(base: Path, out: Path) -> Path:
        folder = _copy(base, out)
        ds = pydicom.dcmread(_files(folder)[0])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / name, enforce_file_format=True)
        return folder

    return make


def _localizer_series(base: Path, out: Path) -> Path:
    folder = _copy(base, out)
    uid = generate_uid()
    for index, path in enumerate(_files(folder)[:3]):
        ds = pydicom.dcmread(path)
        ds.ImageType, ds.SeriesInstanceUID = ["ORIGINAL", "PRIMARY", "LOCALIZER"], uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"scout{index}.dcm", enforce_file_format=True)
    return folder


def _shuffled_names(base: Path, out: Path) -> Path:
    folder = out / "series"
    folder.mkdir()
    files = _files(base)
    for index, path in zip(np.random.default_rng(1).permutation(len(files)), files, strict=True):
        shutil.copy(path, folder / f"IM{index:04d}")
    (folder / "notes.txt").write_text("exported by hand\n")
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    return folder


def _single_file(keep: float) -> Make:
    def make(base: Path, out: Path) -> Path:
        path = out / "one.dcm"
        shutil.copy(_files(base)[FUZZED_SLICE], path)
        if keep < 1:
            _cut(path, keep)
        return path

    return make


def multiframe(base: Path, path: Path, transform: str = "per-frame", measures: bool = True,
               positions: bool = True) -> Path:
    """Write the series ``base`` as one Enhanced CT object: the rescale in each frame's functional group
    ("per-frame"), in the shared group ("shared") or nowhere ("none"); optionally without pixel measures or
    with the last frame's plane position missing."""
    slices = [pydicom.dcmread(p) for p in _files(base)]
    first = slices[0]
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.EnhancedCTImageStorage
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "StudyDate", "Modality", "Rows",
                    "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                    "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(slices)
    shared, orientation = Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = Sequence([orientation])
    if measures:
        pixel = Dataset()
        pixel.PixelSpacing, pixel.SliceThickness = first.PixelSpacing, first.SliceThickness
        shared.PixelMeasuresSequence = Sequence([pixel])
    rescale = Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = (
        first.RescaleSlope, first.RescaleIntercept, "HU")
    if transform == "shared":
        shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for index, item in enumerate(slices):
        frame = Dataset()
        if positions or index < len(slices) - 1:
            position = Dataset()
            position.ImagePositionPatient = item.ImagePositionPatient
            frame.PlanePositionSequence = Sequence([position])
        if transform == "per-frame":
            frame.PixelValueTransformationSequence = Sequence([rescale])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(item.PixelData for item in slices)
    ds.save_as(path, enforce_file_format=True)
    return path


def _multiframe(keep: float = 1.0, **options) -> Make:
    def make(base: Path, out: Path) -> Path:
        path = multiframe(base, out / "enhanced.dcm", **options)
        if keep < 1:
            _cut(path, keep)
        return path

    return make


def _nifti(change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], name: str = "ct.nii.gz"
           ) -> Make:
    """A case maker writing ``change(data, affine)`` of the base NIfTI (data float32 x, y, z as stored)."""

    def make(base: Path, out: Path) -> Path:
        image = nib.load(str(base))
        data, affine = change(np.asarray(image.dataobj, np.float32), image.affine.copy())
        path = out / name
        nib.save(nib.Nifti1Image(data, affine), str(path))
        return path

    return make


def _nan_slices(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data[:, :, 10:13] = np.nan
    return data, affine


def _nan_corners(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.ogrid[: data.shape[0], : data.shape[1]]
    outside = (x - data.shape[0] / 2) ** 2 + (y - data.shape[1] / 2) ** 2 > (min(data.shape[:2]) / 2) ** 2
    data[outside] = np.nan
    return data, affine


def _infinite(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data[50, 50, 15] = np.inf
    return data, affine


def _slabs(count: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Average ``count`` neighbouring slices into one: slabs ``count`` times as thick."""

    def change(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = data.shape[2] // count * count
        slabs = data[:, :, :n].reshape(*data.shape[:2], n // count, count).mean(axis=3)
        affine[:3, 2] *= count
        return slabs, affine

    return change


def _flipped(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored feet first and with x and y swapped: a different layout, the same anatomy."""
    flipped = np.flip(data, axis=2).transpose(1, 0, 2)
    new = affine.copy()
    new[:, 3] = affine @ np.array([0, 0, data.shape[2] - 1, 1])
    new[:3, 2] = -affine[:3, 2]
    new[:3, 0], new[:3, 1] = affine[:3, 1], affine[:3, 0]
    return np.ascontiguousarray(flipped), new


def _zero_voxel_size(base: Path, out: Path) -> Path:
    """The base NIfTI (uncompressed) with no qform / sform and a slice spacing (pixdim[3]) of 0 in its bytes
    (nibabel would fix the value on saving)."""
    image = nib.load(str(base))
    header = image.header.copy()
    header.set_qform(None, code=0)
    header.set_sform(None, code=0)
    path = out / "ct.nii"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header), str(path))
    data = bytearray(path.read_bytes())
    data[88:92] = np.float32(0).tobytes()  # pixdim[3]: the header's pixdim array starts at byte 76
    path.write_bytes(bytes(data))
    return path


def _truncated_gz(base: Path, out: Path) -> Path:
    path = out / "ct.nii.gz"
    path.write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    return path


DROPPED_ONE_SLICE = {  # tag dropped on one slice: the outcome
    "Modality": ("error", errors.IncompleteSeriesError, "missing slices"),  # that slice is no CT image
    "ImageType": ("same", None, ""),
    "SOPInstanceUID": ("error", errors.CorruptFileError, "no SOP/series instance UID"),
    "SeriesInstanceUID": ("error", errors.CorruptFileError, "no SOP/series instance UID"),
    "StudyInstanceUID": ("same", None, ""),  # grouped with the study of its folder
    "ImageOrientationPatient": ("error", errors.HeaderError, "slice has no ImageOrientationPatient"),
    "ImagePositionPatient": ("error", errors.HeaderError, "slice has no ImagePositionPatient"),
    "PixelSpacing": ("error", errors.HeaderError, "no PixelSpacing"),
    "SliceThickness": ("same", None, ""),
    "Rows": ("error", errors.CorruptFileError, "lacks its pixel description"),
    "Columns": ("error", errors.CorruptFileError, "lacks its pixel description"),
    "SamplesPerPixel": ("error", errors.CorruptFileError, "lacks its pixel description"),
    "BitsAllocated": ("error", errors.CorruptFileError, "lacks its pixel description"),
    "BitsStored": ("error", errors.CorruptFileError, "lacks its pixel description"),
    "PixelRepresentation": ("error", errors.CorruptFileError, "lacks its pixel description"),
    "PhotometricInterpretation": ("error", errors.CorruptFileError, "lacks its pixel description"),
    "RescaleSlope": ("error", errors.HeaderError, "rescale tags"),
    "RescaleIntercept": ("error", errors.HeaderError, "rescale tags"),
    "PixelData": ("error", errors.CorruptFileError, "no pixel data"),
    "TransferSyntaxUID": ("error", errors.HeaderError, "no TransferSyntaxUID"),
}

CORRUPTED_ONE_SLICE = [  # (tag, raw value written, outcome, error type, message part)
    ("Modality", b"MR", "error", errors.IncompleteSeriesError, "missing slices"),
    ("ImageType", b"ORIGINAL\\PRIMARY\\LOCALIZER", "error", errors.IncompleteSeriesError, "missing slices"),
    ("ImageOrientationPatient", b"abc\\def", "error", errors.HeaderError, "ImageOrientationPatient"),
    ("ImageOrientationPatient", b"1\\0\\0\\0\\0\\-1", "error", errors.IncompleteSeriesError, "orientation"),
    ("ImageOrientationPatient", b"2\\0\\0\\0\\2\\0", "error", errors.HeaderError, "unit vectors"),
    ("ImagePositionPatient", b"x\\y\\z", "error", errors.HeaderError, "ImagePositionPatient"),
    ("ImagePositionPatient", b"0\\0", "error", errors.HeaderError, "ImagePositionPatient should be 3"),
    ("PixelSpacing", b"0\\0", "error", errors.HeaderError, "must be positive"),
    ("PixelSpacing", b"nan\\nan", "error", errors.HeaderError, "finite"),
    ("PixelSpacing", b"0.5\\0.5", "error", errors.IncompleteSeriesError, "pixel spacing"),
    ("SliceThickness", b"thick", "same", None, ""),
    ("Rows", b"\x00\x01", "error", errors.NotVolumeError, "256 x 512 pixels"),
    ("BitsAllocated", b"\x08\x00", "error", errors.HeaderError, "invalid pixel description"),
    ("BitsStored", b"\x14\x00", "error", errors.HeaderError, "invalid pixel description"),
    ("PixelRepresentation", b"\x01\x00", "error", errors.HeaderError, "differ from the series"),
    ("PhotometricInterpretation", b"RGB ", "error", errors.NotCTError, "colour image"),
    ("PhotometricInterpretation", b"MONOCHROME1 ", "error", errors.HeaderError, "differ from the series"),
    ("RescaleSlope", b"abc ", "error", errors.HeaderError, "RescaleSlope"),
    ("RescaleSlope", b"0 ", "error", errors.HeaderError, "RescaleSlope is 0"),
    ("RescaleIntercept", b"inf ", "error", errors.HeaderError, "RescaleIntercept"),
    ("NumberOfFrames", b"many", "error", errors.HeaderError, "NumberOfFrames"),
]


def _number_of_frames(value: bytes) -> Callable[[Dataset, int], None]:
    def change(ds: Dataset, index: int) -> None:
        ds.NumberOfFrames = 1
        _set_raw("NumberOfFrames", value)(ds, index)

    return change


def _corrupt_maker(tag: str, value: bytes) -> Make:
    return _edit(_number_of_frames(value) if tag == "NumberOfFrames" else _set_raw(tag, value))


def cases() -> list[Case]:
    """Every case of the corpus."""
    corpus = [
        Case("plain copy", "dicom", lambda b, o: _copy(b, o), "same"),
        Case("file names out of order, notes and DICOMDIR beside", "dicom", _shuffled_names, "same"),
        Case("localizer inside the series, named first", "dicom", _with_localizer("0000_scout.dcm"), "warning",
             "1 localizer image in the CT series left out"),
        Case("localizer inside the series, named last", "dicom", _with_localizer("zzzz_scout.dcm"), "warning",
             "1 localizer image in the CT series left out"),
        Case("localizer series beside", "dicom", _localizer_series, "same"),
        Case("5 mm slice thickness", "dicom", _edit(_set("SliceThickness", 5.0), "all"), "warning",
             "slices of 5.0 mm"),
        Case("12 mm slice thickness", "dicom", _edit(_set("SliceThickness", 12.0), "all"), "error",
             "slices of 12.0 mm", errors.SliceThicknessError),
        Case("slices 6 mm apart", "dicom", _edit(_scale_z(3.0), "all"), "warning", "6.0 mm apart"),
        Case("slices 12 mm apart", "dicom", _edit(_scale_z(6.0), "all"), "error", "12.0 mm apart",
             errors.SliceThicknessError),
        Case("no rescale tags (raw values)", "dicom",
             _edit(lambda ds, i: (_drop("RescaleSlope")(ds, i), _drop("RescaleIntercept")(ds, i)), "all"),
             "error", "no air", errors.NotHounsfieldError),
        Case("no PixelSpacing anywhere", "dicom", _edit(_drop("PixelSpacing"), "all"), "error", "no PixelSpacing",
             errors.HeaderError),
        Case("no ImageOrientationPatient anywhere", "dicom", _edit(_drop("ImageOrientationPatient"), "all"),
             "error", "no ImageOrientationPatient", errors.HeaderError),
        Case("all images localizers", "dicom", _edit(_set("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "all"),
             "error", "localizer images only", errors.NotCTError),
        Case("modality MR", "dicom", _edit(_set("Modality", "MR"), "all"), "error", "modality MR", errors.NotCTError),
        Case("one slice cut to 60 %", "dicom", _cut_one(0.6), "error", "pixel data cut short", errors.CorruptFileError),
        Case("one slice cut inside its header", "dicom", _cut_one(0.002), "error", "corrupt DICOM",
             errors.CorruptFileError),
        Case("one JPEG 2000 slice cut to 80 %", "dicom_j2k", _cut_one(0.8), "error", "cut short",
             errors.CorruptFileError),
        Case("one JPEG 2000 slice cut by 3 bytes", "dicom_j2k", _cut_one(0.99998), "error", "cut short",
             errors.CorruptFileError),
        Case("single slice", "dicom", _single_file(1.0), "error", "single 2D CT image", errors.NotVolumeError),
        Case("single slice cut short", "dicom", _single_file(0.5), "error", "pixel data cut short",
             errors.CorruptFileError),
        Case("multi-frame, rescale per frame", "dicom", _multiframe(), "same"),
        Case("multi-frame, rescale shared", "dicom", _multiframe(transform="shared"), "same"),
        Case("multi-frame, no rescale anywhere", "dicom", _multiframe(transform="none"), "error", "no air",
             errors.NotHounsfieldError),
        Case("multi-frame, no pixel measures", "dicom", _multiframe(measures=False), "error", "no PixelSpacing",
             errors.HeaderError),
        Case("multi-frame, a frame without position", "dicom", _multiframe(positions=False), "error",
             "frame 20 has no ImagePositionPatient", errors.HeaderError),
        Case("multi-frame cut short", "dicom", _multiframe(keep=0.7), "error", "pixel data cut short",
             errors.CorruptFileError),
        Case("NIfTI float, feet first, x and y swapped", "nifti", _nifti(_flipped), "same"),
        Case("NIfTI NaN in three slices", "nifti", _nifti(_nan_slices), "error", "NaN or infinite",
             errors.NonFiniteValuesError),
        Case("NIfTI NaN outside a round field of view", "nifti", _nifti(_nan_corners), "error", "NaN or infinite",
             errors.NonFiniteValuesError),
        Case("NIfTI one infinite voxel", "nifti", _nifti(_infinite), "error", "1 voxels", errors.NonFiniteValuesError),
        Case("NIfTI raw values (+1024)", "nifti", _nifti(lambda d, a: (d + 1024, a)), "error", "no air",
             errors.NotHounsfieldError),
        Case("NIfTI zero slice spacing", "nifti", _zero_voxel_size, "error", "geometry unknown", errors.HeaderError),
        Case("NIfTI 6 mm slabs", "nifti", _nifti(_slabs(2)), "warning", "slices of 6.0 mm"),
        Case("NIfTI 9 mm slabs", "nifti", _nifti(_slabs(3)), "error", "slices of 9.0 mm", errors.SliceThicknessError),
        Case("NIfTI one 2D slice", "nifti", _nifti(lambda d, a: (d[:, :, 10:11], a)), "error", "3D CT volume",
             errors.NotVolumeError),
        Case("NIfTI gzip cut in half", "nifti", _truncated_gz, "error", "not a readable NIfTI",
             errors.CorruptFileError),
    ]
    for tag, (outcome, error, text) in DROPPED_ONE_SLICE.items():
        corpus.append(Case(f"{tag} dropped on one slice", "dicom", _edit(_drop(tag)), outcome, text, error))
    for tag, value, outcome, error, text in CORRUPTED_ONE_SLICE:
        corpus.append(Case(f"{tag} = {value!r} on one slice", "dicom", _corrupt_maker(tag, value), outcome, text,
                           error))
    return corpus


CASES_BY_NAME = {case.name: case for case in cases()}
