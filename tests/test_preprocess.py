"""Windows, normalisation and the working grid."""

from __future__ import annotations

import numpy as np
import pytest

from ctriage.preprocess import window


def test_window_maps_to_unit_interval():
    hu = np.array([-2000, -1350, -600, 150, 3000])
    assert window(hu, (-1350, 150)).tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_working_grid_round_trip():
    """A block-constant mask survives subsample -> upsample, in-plane and across slices."""
    from ctriage.preprocess import subsample, upsample, work_grid_factor, work_grid_z_factor

    spacing = (1.0, 0.7, 0.7)
    factor, z_factor = work_grid_factor(spacing), work_grid_z_factor(spacing)
    assert (factor, z_factor) == (3, 2)
    grid = np.random.default_rng(1).random((6, 10, 12)) > 0.5
    full = upsample(grid, factor, (12, 31, 37), z_factor)
    assert full.shape == (12, 31, 37) and not full[:, 30:].any() and not full[:, :, 36:].any()
    assert np.array_equal(subsample(full, factor, z_factor), grid)
    labels = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    odd = upsample(labels, 1, (7, 4, 4), 2)  # the seventh slice repeats the last analysed one
    assert odd.dtype == np.uint8 and np.array_equal(odd[6], labels[2]) and np.array_equal(odd[::2][:3], labels)


def test_work_grid_object_matches_the_functions():
    """``WorkGrid`` carries the factors once: its spacing, slices and resampling are those of the functions."""
    from ctriage.preprocess import WorkGrid, grown_box, subsample, upsample

    grid = WorkGrid.of((1.0, 0.7, 0.7))
    assert (grid.factor, grid.z_factor) == (3, 2) and grid.slices == slice(1, None, 2)
    assert grid.work_spacing_mm == pytest.approx((2.0, 2.1, 2.1)) and grid.pixel_mm == pytest.approx((2.1, 2.1))
    mask = np.random.default_rng(2).random((12, 31, 37)) > 0.5
    assert np.array_equal(grid.subsample(mask), subsample(mask, 3, 2))
    assert np.array_equal(grid.upsample(grid.subsample(mask), mask.shape), upsample(subsample(mask, 3, 2), 3,
                                                                                     mask.shape, 2))
    # the pipeline's way back from the analysed slices: each slice takes the middle slice of its pair
    assert np.array_equal(grid.upsample_slices(mask[grid.slices], mask.shape), mask[1::2].repeat(2, axis=0))
    plane = np.zeros((40, 50), bool)
    plane[10:20, 30:35] = True
    assert grown_box(plane, 2.0, (0.7, 1.0)) == (slice(7, 23), slice(28, 37))  # 2 mm: 3 rows, 2 columns


def test_fill_blocks_sets_exactly_the_upsampled_blocks():
    from ctriage.preprocess import fill_blocks, upsample

    rng = np.random.default_rng(2)
    blocks = np.zeros((5, 10, 12), bool)
    blocks[1:4, 2:7, 3:9] = rng.random((3, 5, 6)) > 0.5
    labels = rng.integers(0, 3, (5, 31, 37)).astype(np.uint8)
    expected = np.where(upsample(blocks, 3, labels.shape), np.uint8(0), labels)
    fill_blocks(labels, blocks, 3, 0)
    assert np.array_equal(labels, expected)


def test_voxels_per_slice_counts_non_zero_voxels():
    from ctriage.preprocess import voxels_per_slice

    labels = np.zeros((3, 4, 5), np.uint8)
    labels[0, 1, 1:3] = (1, 2)
    labels[2] = 1
    assert voxels_per_slice(labels).tolist() == [2, 0, 20]
    assert voxels_per_slice(labels > 0).tolist() == [2, 0, 20]
    assert voxels_per_slice(np.zeros((0, 4, 5), bool)).shape == (0,)


def test_block_counts():
    from ctriage.preprocess import block_counts

    mask = np.zeros((2, 7, 6), bool)
    mask[0, 0:3, 0:3] = True  # one whole block
    mask[1, 4, 5] = True  # one voxel of block (1, 1)
    mask[1, 6, :] = True  # the rim row beyond the last whole block is not counted
    counts = block_counts(mask, 3)
    assert counts.shape == (2, 2, 2) and counts.dtype == np.uint16
    assert counts[0].tolist() == [[9, 0], [0, 0]] and counts[1].tolist() == [[0, 0], [0, 1]]
