"""HU windows, [0, 1] normalisation and the ~2 mm working grid (:class:`WorkGrid`: subsample, block counts,
upsample, boxes with a margin in mm)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class WorkGrid:
    """A voxel grid of ``spacing_mm`` (z, y, x) and its working grid of about ``WORK_PIXEL_MM``: blocks of
    ``z_factor`` slices x ``factor`` x ``factor`` pixels (see :func:`work_grid_factor`, :func:`work_grid_z_factor`).

    Built once per volume (:meth:`of`) and passed to the steps that compute masks on the working grid.
    """

    spacing_mm: tuple[float, float, float]
    factor: int
    z_factor: int

    @classmethod
    def of(cls, spacing_mm: tuple[float, float, float]) -> WorkGrid:
        """The working grid of a voxel grid of ``spacing_mm`` (z, y, x) mm."""
        spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
        return cls(spacing, work_grid_factor(spacing), work_grid_z_factor(spacing))

    @property
    def work_spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm of the working grid."""
        z, y, x = self.spacing_mm
        return (z * self.z_factor, y * self.factor, x * self.factor)

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """In-plane pixel size (y, x) in mm of the working grid."""
        return (self.spacing_mm[1] * self.factor, self.spacing_mm[2] * self.factor)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel of the voxel grid in mL."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    @property
    def slices(self) -> slice:
        """The middle slice of each group of ``z_factor`` slices: the voxel grid's slices on the working grid."""
        return slice(self.z_factor // 2, None, self.z_factor)

    def subsample(self, volume: np.ndarray) -> np.ndarray:
        """:func:`subsample` of a (z, y, x) array onto the working grid, slices included."""
        return subsample(volume, self.factor, self.z_factor)

    def subsample_in_plane(self, volume: np.ndarray) -> np.ndarray:
        """:func:`subsample` of a (z, y, x) array in-plane only (every slice kept)."""
        return subsample(volume, self.factor)

    def upsample(self, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """:func:`upsample` of a working-grid mask from :meth:`subsample` back to the voxel grid's ``shape``."""
        return upsample(mask, self.factor, shape, self.z_factor)

    def upsample_in_plane(self, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """:func:`upsample` of a mask from :meth:`subsample_in_plane` back to ``shape``."""
        return upsample(mask, self.factor, shape)

    def upsample_slices(self, mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A mask on the slices :attr:`slices` back onto every slice of ``shape`` (each slice takes the mask of its
        group's analysed slice); in-plane untouched."""
        return upsample(mask, 1, shape, self.z_factor)

    def block_counts(self, mask: np.ndarray) -> np.ndarray:
        """:func:`block_counts` of a bool (z, y, x) mask over the in-plane blocks."""
        return block_counts(mask, self.factor)

    def fill_blocks(self, array: np.ndarray, blocks: np.ndarray, value: bool | int) -> None:
        """:func:`fill_blocks`: set the voxels of the in-plane working-grid ``blocks`` of ``array`` to ``value``."""
        fill_blocks(array, blocks, self.factor, value)


def grown_box(plane: np.ndarray, margin_mm: float, pixel_mm: tuple[float, float]) -> tuple[slice, slice]:
    """Bounding box (rows, cols) of the non-zero pixels of a 2D mask with pixels ``pixel_mm`` (y, x) mm, grown by
    ``margin_mm`` (rounded up to whole pixels) on every side and cut at the plane's edges."""
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    reach = [math.ceil(margin_mm / size) for size in pixel_mm]
    return (slice(max(rows[0] - reach[0], 0), rows[-1] + 1 + reach[0]),
            slice(max(cols[0] - reach[1], 0), cols[-1] + 1 + reach[1]))
