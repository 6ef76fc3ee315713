"""Small synthetic DICOM series written with pydicom, for loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def _pixels(shape: tuple[int, int], value: int) -> np.ndarray:
    """A uint16 slice of ``value`` with air (0) in its last quarter of rows."""
    pixels = np.full(shape, value, np.uint16)
    pixels[shape[0] - shape[0] // 4 :] = 0
    return pixels


def write_series(
    folder: Path,
    z_positions_mm: list[float],
    modality: str = "CT",
    shape: tuple[int, int] = (32, 32),
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    shuffle_names: bool = True,
    series_uid: str | None = None,
    study_uid: str | None = None,
) -> list[Path]:
    """Write one single-frame series, pixel value = 1000 + 10 * slice index (HU = value - 1024), except air
    (stored 0, -1024 HU) in the last quarter of the rows, as a CT has around the body."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    paths = []
    order = np.random.default_rng(0).permutation(len(z_positions_mm)) if shuffle_names else range(len(z_positions_mm))
    for name_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"img{name_index:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.PatientID = "SYN001"
        ds.PatientName = "Synthetic^Series"
        ds.StudyDate = "20260101"
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [-16.0, -16.0, float(z_positions_mm[k])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.PixelData = _pixels(shape, 1000 + 10 * int(k)).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_multiframe(path: Path, z_positions_mm: list[float], shape: tuple[int, int] = (24, 24)) -> Path:
    """Write an Enhanced CT (multi-frame) object: frame k has pixel value 1000 + 10 k, frames stored in the
    order given (positions need not be sorted), rescale intercept -1024 in a per-frame functional group; air
    (stored 0) in the last quarter of the rows."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PatientID = "SYNMF"
    ds.NumberOfFrames = len(z_positions_mm)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [0.5, 0.5]
    measures.SliceThickness = 1.5
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in z_positions_mm:
        frame, position, transform = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(z)]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
        frame.PlanePositionSequence = Sequence([position])
        frame.PixelValueTransformationSequence = Sequence([transform])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([_pixels(shape, 1000 + 10 * k) for k in range(len(z_positions_mm))]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
