"""Slice-level agreement of a study's lesion mask with per-slice reference labels (e.g. COVID-CT-MD)."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ctriage.evaluate.metrics import sensitivity_specificity
from ctriage.preprocess import voxels_per_slice

MIN_LESION_AREA_MM2 = 25.0  # a slice "carries lesion" from this much lesion area on it


@dataclass(frozen=True)
class SliceAgreement:
    """Per-slice lesion presence against reference labels; rates in [0, 1]."""

    sensitivity: float
    specificity: float
    n_positive: int
    n_negative: int
    false_negative_slices: list[int]
    false_positive_slices: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def slice_lesion_area_mm2(lesion_mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Lesion area on each axial slice in mm^2, shape (z,)."""
    return voxels_per_slice(lesion_mask) * float(spacing_mm[1] * spacing_mm[2])


def marked_slices(
    lesion_mask: np.ndarray, spacing_mm: tuple[float, float, float], min_area_mm2: float = MIN_LESION_AREA_MM2
) -> np.ndarray:
    """bool (z,): the axial slices that carry at least ``min_area_mm2`` of lesion."""
    return slice_lesion_area_mm2(lesion_mask, spacing_mm) >= min_area_mm2


def slice_agreement(
    lesion_mask: np.ndarray,
    spacing_mm: tuple[float, float, float],
    reference: np.ndarray,
    min_area_mm2: float = MIN_LESION_AREA_MM2,
) -> SliceAgreement:
    """Compare 'slice carries >= ``min_area_mm2`` of lesion' with ``reference`` (bool per canonical z slice)."""
    reference = np.asarray(reference, bool)
    predicted = marked_slices(lesion_mask, spacing_mm, min_area_mm2)
    sensitivity, specificity = sensitivity_specificity(reference, predicted)
    return SliceAgreement(
        sensitivity=sensitivity,
        specificity=specificity,
        n_positive=int(reference.sum()),
        n_negative=int((~reference).sum()),
        false_negative_slices=[int(k) for k in np.flatnonzero(reference & ~predicted)],
        false_positive_slices=[int(k) for k in np.flatnonzero(~reference & predicted)],
    )


@dataclass(frozen=True)
class MarkedAttenuation:
    """What a lesion mask marks on a set of slices: their count, the lesion mL per slice and the HU quartiles
    (25th, 50th, 75th percentile) of the marked voxels (None without any)."""

    slices: int
    ml_per_slice: float
    hu_quartiles: tuple[float, float, float] | None


def marked_attenuation(
    lesion_mask: np.ndarray, hu: np.ndarray, spacing_mm: tuple[float, float, float], slices: np.ndarray
) -> MarkedAttenuation:
    """The lesion (``lesion_mask`` > 0, z-y-x) on the chosen ``slices`` (bool (z,)) of ``hu``: whether what is
    marked has the attenuation of an opacity (ground glass about -700..-300 HU, consolidation about -100..+100)
    or of aerated lung (about -850 HU)."""
    slices = np.asarray(slices, bool)
    voxels = hu[(lesion_mask > 0) & slices[:, None, None]]
    count = int(slices.sum())
    if voxels.size == 0:
        return MarkedAttenuation(count, 0.0, None)
    ml = voxels.size * float(np.prod(spacing_mm)) / 1000.0
    low, median, high = (float(q) for q in np.percentile(voxels, (25, 50, 75)))
    return MarkedAttenuation(count, ml / count, (low, median, high))


def read_slice_labels(csv_path: Path, slice_files: list[Path], column: str = "infection") -> np.ndarray:
    """Reference label per canonical slice, matched by file name (CSV columns ``file`` and ``column``)."""
    with open(csv_path, newline="") as handle:
        by_file = {row["file"]: row[column] for row in csv.DictReader(handle)}
    missing = [f.name for f in slice_files if f.name not in by_file]
    if missing:
        raise ValueError(f"{csv_path}: no label for {len(missing)} slices, e.g. {missing[0]}")
    return np.array([int(float(by_file[f.name])) > 0 for f in slice_files])
