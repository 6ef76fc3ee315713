"""The in-memory CT volume every stage works on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StudyMeta:
    """What a report needs to name the study; empty strings where the source has no such field."""

    patient_id: str = ""
    patient_name: str = ""
    patient_sex: str = ""
    patient_age: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    study_date: str = ""
    study_description: str = ""
    series_description: str = ""
    accession_number: str = ""
    manufacturer: str = ""
    source_path: str = ""
    source_format: str = ""
    transfer_syntax: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class CTVolume:
    """A chest CT in Hounsfield units, in ctriage's canonical orientation.

    ``hu`` is int16 indexed (z, y, x): z runs from head to feet (superior -> inferior), y from anterior to
    posterior, x from the patient's right to left, so an axial slice ``hu[k]`` shows the usual radiological view.
    ``spacing_mm`` is (z, y, x) in mm. ``affine`` maps (z, y, x) voxel indices to patient LPS coordinates in mm.
    ``slice_files`` names the DICOM file of each z slice when the source was a single-frame DICOM series.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    meta: StudyMeta = field(default_factory=StudyMeta)
    slice_files: list[Path] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
        return float(np.prod(self.spacing_mm)) / 1000.0


def affine_from_lps(
    origin_mm: np.ndarray, directions: np.ndarray, spacing_mm: tuple[float, float, float]
) -> np.ndarray:
    """4x4 affine from (z, y, x) indices to LPS mm; ``directions`` holds the unit LPS vector of each axis as rows."""
    affine = np.eye(4)
    for axis in range(3):
        affine[:3, axis] = np.asarray(directions[axis], float) * float(spacing_mm[axis])
    affine[:3, 3] = origin_mm
    return affine
