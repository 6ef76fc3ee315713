"""Label maps: a label's voxels are found in the map's own dtype, with the same answer as a plain comparison."""

from __future__ import annotations

import numpy as np

from ctriage.labels import LesionLabel, LungLabel, label_mask


def test_label_mask_matches_a_plain_comparison():
    labels = np.random.default_rng(0).integers(0, 3, (4, 16, 16)).astype(np.uint8)
    for label in (*LesionLabel, *LungLabel):
        mask = label_mask(labels, label)
        assert mask.dtype == bool and mask.shape == labels.shape
        assert np.array_equal(mask, labels.astype(np.int64) == int(label))
    assert label_mask(labels, LesionLabel.GGO).sum() == (labels == 1).sum() > 0
