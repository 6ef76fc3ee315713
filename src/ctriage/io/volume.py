"""The in-memory CT volume every stage works on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
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


SliceDecoder = Callable[[list[int]], Iterator[np.ndarray]]  # z indices -> their HU slices, in that order


class CTVolume:
    """A chest CT in Hounsfield units, in ctriage's canonical orientation.

    ``hu`` is int16 indexed (z, y, x): z runs from head to feet (superior -> inferior), y from anterior to
    posterior, x from the patient's right to left, so an axial slice ``hu[k]`` shows the usual radiological view.
    ``spacing_mm`` is (z, y, x) in mm. ``affine`` maps (z, y, x) voxel indices to patient LPS coordinates in mm.
    ``slice_files`` names the DICOM file of each z slice when the source was a single-frame DICOM series.

    ``warnings`` says what limits the analysis of this input (thick slices, images left out), in words for a user.

    A volume can be loaded with some slices not decoded yet (``missing``, bool (z,), and their ``decoder``): they
    are decoded the first time ``hu`` is read, and :meth:`hu_at` reads chosen slices decoding only those.
    """

    def __init__(
        self,
        hu: np.ndarray,
        spacing_mm: tuple[float, float, float],
        affine: np.ndarray,
        meta: StudyMeta | None = None,
        slice_files: list[Path] | None = None,
        missing: np.ndarray | None = None,
        decoder: SliceDecoder | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        if missing is not None and missing.any() and decoder is None:
            raise ValueError("missing slices need a decoder")
        self._hu = hu
        self.spacing_mm = spacing_mm
        self.affine = affine
        self.meta = meta or StudyMeta()
        self.slice_files = slice_files
        self._missing = np.zeros(hu.shape[0], bool) if missing is None else missing.copy()
        self._decoder = decoder
        self.warnings = list(warnings or [])

    def __repr__(self) -> str:
        return f"CTVolume(shape={self.shape}, spacing_mm={self.spacing_mm}, meta={self.meta})"

    @property
    def hu(self) -> np.ndarray:
        """Every slice, int16 HU (z, y, x)."""
        return self.hu_at(slice(None))

    def hu_at(self, z: slice | int) -> np.ndarray:
        """The slices ``z`` (a slice of the z axis, or one index) in HU, decoding those not decoded yet."""
        if self._missing.any():
            wanted = np.atleast_1d(np.arange(self.shape[0])[z])
            todo = [int(k) for k in wanted[self._missing[wanted]]]
            for k, hu_slice in zip(todo, self._decoder(todo), strict=True):
                self._hu[k] = hu_slice
                self._missing[k] = False
        return self._hu[z]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._hu.shape)  # type: ignore[return-value]

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
