"""Severity maths: exact volumes on phantoms and hand-made masks, CT-0..4 boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctriage.severity import ct_category, quantify


@pytest.mark.parametrize(
    ("ratio", "category"),
    [(0.0, 0), (1e-6, 1), (0.2499, 1), (0.25, 2), (0.4999, 2), (0.5, 3), (0.7499, 3), (0.75, 4), (1.0, 4)],
)
def test_ct_category_bounds(ratio, category):
    assert ct_category(ratio) == category


def test_quantify_hand_made():
    left = np.zeros((4, 10, 10), bool)
    right = np.zeros_like(left)
    left[:, :, 5:] = True  # 200 voxels
    right[:, :, :5] = True  # 200 voxels
    labels = np.zeros(left.shape, np.uint8)
    labels[0, :, 5:] = 1  # 50 GGO voxels in the left lung
    labels[1, :5, 5:] = 2  # 25 consolidation voxels in the left lung
    labels[2, :2, :5] = 1  # 10 GGO voxels in the right lung
    severity = quantify(left, right, labels, spacing_mm=(2.0, 1.0, 1.0))  # 2 mm^3 per voxel
    assert severity.left.ratio == pytest.approx(75 / 200)
    assert severity.right.ratio == pytest.approx(10 / 200)
    assert severity.max_ratio == pytest.approx(0.375)
    assert severity.ct_category == 2
    assert severity.ggo_ml == pytest.approx(60 * 2 / 1000)
    assert severity.consolidation_ml == pytest.approx(25 * 2 / 1000)
    assert severity.total_burden_percent == pytest.approx(100 * 85 / 400)


def test_lesion_outside_lungs_not_counted():
    lung = np.zeros((2, 4, 4), bool)
    lung[:, :2] = True
    labels = np.ones(lung.shape, np.uint8)
    severity = quantify(lung, np.zeros_like(lung), labels, (1.0, 1.0, 1.0))
    assert severity.left.lesion_ml == pytest.approx(16 / 1000)
    assert severity.left.ratio == 1.0 and severity.right.ratio == 0.0


def test_phantom_known_volumes(phantom):
    severity = quantify(phantom.lung_left, phantom.lung_right, phantom.lesion_labels, phantom.volume.spacing_mm)
    voxel_ml = phantom.volume.voxel_volume_ml
    assert severity.ggo_ml == pytest.approx((phantom.lesion_labels == 1).sum() * voxel_ml)
    assert severity.consolidation_ml == pytest.approx((phantom.lesion_labels == 2).sum() * voxel_ml)
    assert severity.lung_ml == pytest.approx((phantom.lung_left.sum() + phantom.lung_right.sum()) * voxel_ml)
    # independently of voxel counting: each phantom lung is an ellipsoid with semi-axes 63 x 64.8 x 48 mm
    assert severity.lung_ml == pytest.approx(2 * 4 / 3 * math.pi * 63.0 * 64.8 * 48.0 / 1000.0, rel=1e-2)
