"""HU windows, [0, 1] normalisation and the ~2 mm working grid (subsample, block counts, upsample)."""

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


WORK_PIXEL_MM = 2.0  # in-plane pixel size of the working grid that masks are computed on


def work_grid_factor(spacing_mm: tuple[float, float, float]) -> int:
    """In-plane subsampling factor f from the voxel grid to the working grid (pixels of about ``WORK_PIXEL_MM``)."""
    return max(1, int(round(WORK_PIXEL_MM / min(spacing_mm[1], spacing_mm[2]))))


def work_grid_z_factor(spacing_mm: tuple[float, float, float]) -> int:
    """Slice subsampling factor from the voxel grid to a working grid of about ``WORK_PIXEL_MM`` slices
    (round(2 mm / slice spacing): 1 down to 1.34 mm slices, 2 for 1 mm, 3 for 0.6 mm)."""
    return max(1, int(round(WORK_PIXEL_MM / spacing_mm[0])))


def subsample(volume: np.ndarray, factor: int, z_factor: int = 1) -> np.ndarray:
    """The centre voxel of each ``z_factor`` x ``factor`` x ``factor`` block of a (z, y, x) array (a view, no
    copy): HU thresholds far from tissue edges need no averaging, and block-constant masks are sampled exactly."""
    start, z_start = factor // 2, z_factor // 2
    rows, cols = volume.shape[1] // factor, volume.shape[2] // factor
    return volume[z_start::z_factor, start::factor, start::factor][:, :rows, :cols]


def voxels_per_slice(mask: np.ndarray) -> np.ndarray:
    """Number of non-zero voxels on each z slice of a (z, y, x) array, int64 (z,) (counted plane by plane: several
    times faster than ``count_nonzero(..., axis)``)."""
    return np.array([np.count_nonzero(plane) for plane in mask], np.int64).reshape(len(mask))


def block_counts(mask: np.ndarray, factor: int) -> np.ndarray:
    """Number of True voxels in each ``factor`` x ``factor`` in-plane block of a bool (z, y, x) mask, uint16
    (z, y // f, x // f); the blocks are those of :func:`subsample`."""
    rows, cols = mask.shape[1] // factor, mask.shape[2] // factor
    voxels = mask[:, : rows * factor, : cols * factor].view(np.uint8)
    dtype = np.uint8 if factor * factor < 256 else np.uint16
    by_rows = sum(voxels[:, i::factor].astype(dtype, copy=False) for i in range(factor))  # strided adds: fast
    return sum(by_rows[:, :, j::factor] for j in range(factor)).astype(np.uint16)


def upsample(mask: np.ndarray, factor: int, shape: tuple[int, ...], z_factor: int = 1) -> np.ndarray:
    """Nearest-neighbour upsampling of a working-grid mask (bool or labels) made by :func:`subsample` back to
    ``shape`` (a new array); the in-plane rim beyond the last whole block stays 0, slices beyond the last
    block repeat it."""
    if z_factor > 1:
        mask = mask[np.minimum(np.arange(shape[0]) // z_factor, len(mask) - 1)]  # a copy, in one pass
    if factor == 1 and mask.shape == tuple(shape):
        return mask if z_factor > 1 else mask.copy()
    rows, cols = mask.shape[1], mask.shape[2]
    out = np.zeros(shape, mask.dtype)
    if factor == 1:
        out[:, :rows, :cols] = mask
    else:
        wide = np.repeat(mask, factor, axis=2)
        blocks = out[:, : rows * factor, : cols * factor]
        for i in range(factor):  # strided row writes: 2.5x faster than a second repeat and a copy
            blocks[:, i::factor] = wide
    return out


def fill_blocks(array: np.ndarray, blocks: np.ndarray, factor: int, value: bool | int) -> None:
    """Set the voxels of the working-grid ``blocks`` (bool (z, y // f, x // f), see :func:`subsample`) in the
    (z, y, x) ``array`` to ``value``, in place, with f x f strided writes over the blocks' bounding box only."""
    if not blocks.any():
        return
    zs, ys, xs = ndimage.find_objects(blocks.view(np.uint8))[0]
    part = blocks[zs, ys, xs]
    for i in range(factor):
        for j in range(factor):
            rows = slice(ys.start * factor + i, ys.stop * factor, factor)
            cols = slice(xs.start * factor + j, xs.stop * factor, factor)
            array[zs, rows, cols][part] = value
