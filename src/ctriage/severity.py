"""Severity from lung and lesion masks: per-lung lesion ratio, triage score, CT-0..4, GGO / consolidation mL."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ctriage.labels import LesionLabel, label_mask

# CT-0..CT-4 upper bounds of the lesion percentage of the worse lung (Morozov et al., used by Goncharov et al.)
CT_CATEGORY_BOUNDS_PERCENT = (25.0, 50.0, 75.0)


@dataclass(frozen=True)
class LungSeverity:
    """One lung: volumes in mL and lesion ratio in [0, 1]."""

    lung_ml: float
    lesion_ml: float
    ggo_ml: float
    consolidation_ml: float
    ratio: float


@dataclass(frozen=True)
class Severity:
    """Study severity. ``max_ratio`` (worse lung) is the triage score; percentages are in [0, 100]."""

    left: LungSeverity
    right: LungSeverity
    max_ratio: float
    ct_category: int
    ggo_ml: float
    consolidation_ml: float
    lesion_ml: float
    lung_ml: float
    total_burden_percent: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["units"] = {"*_ml": "mL", "ratio": "fraction of the lung's volume, 0..1", "*_percent": "%"}
        return out


def ct_category(max_ratio: float) -> int:
    """CT-0 for no lesion, then CT-1 (0, 25 %), CT-2 [25, 50 %), CT-3 [50, 75 %), CT-4 [75, 100 %]."""
    if max_ratio <= 0:
        return 0
    percent = 100.0 * max_ratio
    return 1 + sum(percent >= bound for bound in CT_CATEGORY_BOUNDS_PERCENT)


def _lung_severity(lung: np.ndarray, lesion_labels: np.ndarray, voxel_ml: float) -> LungSeverity:
    inside = lesion_labels[lung]
    ggo = int(np.count_nonzero(label_mask(inside, LesionLabel.GGO)))
    consolidation = int(np.count_nonzero(label_mask(inside, LesionLabel.CONSOLIDATION)))
    lung_voxels = int(np.count_nonzero(lung))
    lesion = ggo + consolidation
    return LungSeverity(
        lung_ml=lung_voxels * voxel_ml,
        lesion_ml=lesion * voxel_ml,
        ggo_ml=ggo * voxel_ml,
        consolidation_ml=consolidation * voxel_ml,
        ratio=lesion / lung_voxels if lung_voxels else 0.0,
    )


def quantify(
    lung_left: np.ndarray, lung_right: np.ndarray, lesion_labels: np.ndarray, spacing_mm: tuple[float, float, float]
) -> Severity:
    """Quantify severity; ``lesion_labels`` holds :class:`LesionLabel` values (a binary 0/1 mask counts as GGO).
    Lesion voxels outside both lungs are not counted: severity is lesion / lung within each lung."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    left = _lung_severity(np.asarray(lung_left, bool), lesion_labels, voxel_ml)
    right = _lung_severity(np.asarray(lung_right, bool), lesion_labels, voxel_ml)
    max_ratio = max(left.ratio, right.ratio)
    lung_ml = left.lung_ml + right.lung_ml
    lesion_ml = left.lesion_ml + right.lesion_ml
    return Severity(
        left=left,
        right=right,
        max_ratio=max_ratio,
        ct_category=ct_category(max_ratio),
        ggo_ml=left.ggo_ml + right.ggo_ml,
        consolidation_ml=left.consolidation_ml + right.consolidation_ml,
        lesion_ml=lesion_ml,
        lung_ml=lung_ml,
        total_burden_percent=100.0 * lesion_ml / lung_ml if lung_ml else 0.0,
    )
