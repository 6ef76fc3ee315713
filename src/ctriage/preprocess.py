"""Resampling, HU windows and [0, 1] normalisation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# HU windows used in the papers: soft tissue-ish [-150, 350], wide [-1024, 350], and the lung window.
WINDOW_MEDIASTINUM_HU = (-150.0, 350.0)
WINDOW_WIDE_HU = (-1024.0, 350.0)
WINDOW_LUNG_HU = (-1350.0, 150.0)  # level -600, width 1500

# The HU range that maps onto the 8-bit slices the lesion model was trained on: aerated lung (about -870 HU)
# lands near grey 45 and soft tissue (about +40 HU) near grey 215, as in those slices. Calibrated by matching
# grey-level landmarks of the training slices to HU on real CT; see docs/calibration.md.
LESION_INPUT_WINDOW_HU = (-1150.0, 250.0)


def window(hu: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """Clip ``hu`` to ``window_hu`` = (low, high) HU and scale linearly to float32 in [0, 1]."""
    low, high = window_hu
    out = (np.asarray(hu, np.float32) - low) / float(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def resample(
    volume: np.ndarray, spacing_mm: tuple[float, ...], target_spacing_mm: tuple[float, ...], order: int = 1
) -> tuple[np.ndarray, tuple[float, ...]]:
    """Resample to ``target_spacing_mm`` (same axis order); ``order`` 0 for masks, 1 for images.

    Returns the resampled array and its exact spacing (the grid is rounded to whole voxels).
    """
    zoom = [s / t for s, t in zip(spacing_mm, target_spacing_mm, strict=True)]
    new_shape = [max(1, int(round(n * z))) for n, z in zip(volume.shape, zoom, strict=True)]
    factors = [ns / n for ns, n in zip(new_shape, volume.shape, strict=True)]
    out = ndimage.zoom(
        volume, factors, order=order, prefilter=False, grid_mode=True, mode="grid-constant" if order == 0 else "nearest"
    )
    exact = tuple(s * n / ns for s, n, ns in zip(spacing_mm, volume.shape, new_shape, strict=True))
    return out, exact


def resize_to_shape(volume: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    """Resize ``volume`` to exactly ``shape`` (used to bring a resampled mask back onto the original grid)."""
    factors = [t / n for t, n in zip(shape, volume.shape, strict=True)]
    return ndimage.zoom(volume, factors, order=order, prefilter=False, grid_mode=True, mode="nearest")
