"""Windows, normalisation and resampling."""

from __future__ import annotations

import numpy as np
import pytest

from ctriage.preprocess import resample, resize_to_shape, window


def test_window_maps_to_unit_interval():
    hu = np.array([-2000, -1350, -600, 150, 3000])
    assert window(hu, (-1350, 150)).tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_resample_spacing_and_back():
    volume = np.random.default_rng(0).normal(size=(20, 40, 40)).astype(np.float32)
    out, spacing = resample(volume, (5.0, 0.8, 0.8), (2.5, 1.6, 1.6))
    assert out.shape == (40, 20, 20)
    assert spacing == pytest.approx((2.5, 1.6, 1.6))
    mask = np.zeros((20, 40, 40), np.uint8)
    mask[5:15, 10:30, 10:30] = 1
    small, _ = resample(mask, (5.0, 0.8, 0.8), (5.0, 1.6, 1.6), order=0)
    back = resize_to_shape(small, mask.shape, order=0)
    assert back.shape == mask.shape and np.array_equal(back, mask)
