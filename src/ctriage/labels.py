"""The label numbers of ctriage's masks, in one place: lesion labels (lesion model, severity, identification,
reports, DICOM SEG, evaluation, viewer) and lung labels (lungs.nii.gz, viewer)."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class LesionLabel(IntEnum):
    """Voxel values of a lesion mask (uint8): the lesion model's classes and the reference masks' values."""

    BACKGROUND = 0
    GGO = 1  # ground-glass opacity
    CONSOLIDATION = 2


class LungLabel(IntEnum):
    """Voxel values of a lung label map (uint8, lungs.nii.gz)."""

    BACKGROUND = 0
    RIGHT = 1
    LEFT = 2


def label_mask(labels: np.ndarray, label: int) -> np.ndarray:
    """Bool mask of the voxels of ``labels`` (a label map) equal to ``label``, compared in the map's own dtype:
    against an IntEnum member numpy would first widen the whole map to int64 (twice as slow on a study)."""
    return labels == labels.dtype.type(label)
