"""Small synthetic DICOM series written with pydicom, for loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


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
    """Write one single-frame series, pixel value = 1000 + 10 * slice index (HU = value - 1024)."""
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
        ds.PixelData = np.full(shape, 1000 + 10 * int(k), np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
