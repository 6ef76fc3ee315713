"""Slice-level agreement and what a lesion mask marks on chosen slices."""

from __future__ import annotations

import numpy as np
import pytest

from ctriage.evaluate.slices import marked_attenuation, marked_slices, slice_agreement

SPACING_MM = (4.0, 1.0, 1.0)  # 1 mm2 pixels, 4 uL voxels


def _study() -> tuple[np.ndarray, np.ndarray]:
    """4 slices of aerated lung (-850 HU): slice 1 holds a 10 x 10 ground-glass patch (-500 HU, marked), slice 2
    a marked 4 x 4 speck (16 mm2, under the 25 mm2 a slice needs), slice 3 a 6 x 6 mark on aerated lung."""
    hu = np.full((4, 32, 32), -850, np.int16)
    lesion = np.zeros(hu.shape, np.uint8)
    hu[1, 5:15, 5:15] = -500
    lesion[1, 5:15, 5:15] = 1
    lesion[2, 5:9, 5:9] = 2
    lesion[3, 20:26, 20:26] = 1
    return hu, lesion


def test_marked_slices_need_the_minimum_area():
    _, lesion = _study()
    assert marked_slices(lesion, SPACING_MM).tolist() == [False, True, False, True]
    assert marked_slices(lesion, SPACING_MM, min_area_mm2=10.0).tolist() == [False, True, True, True]


def test_slice_agreement_lists_the_disagreeing_slices():
    _, lesion = _study()
    agreement = slice_agreement(lesion, SPACING_MM, np.array([False, True, True, False]))
    assert agreement.sensitivity == 0.5 and agreement.specificity == 0.5
    assert agreement.false_negative_slices == [2] and agreement.false_positive_slices == [3]


def test_marked_attenuation_tells_an_opacity_from_aerated_lung():
    hu, lesion = _study()
    opacity = marked_attenuation(lesion, hu, SPACING_MM, np.array([False, True, False, False]))
    assert opacity.slices == 1
    assert opacity.ml_per_slice == pytest.approx(100 * 4 / 1000)
    assert opacity.hu_quartiles == (-500.0, -500.0, -500.0)
    aerated = marked_attenuation(lesion, hu, SPACING_MM, np.array([False, False, False, True]))
    assert aerated.hu_quartiles == (-850.0, -850.0, -850.0)
    nothing = marked_attenuation(lesion, hu, SPACING_MM, np.array([True, False, False, False]))
    assert nothing == type(nothing)(1, 0.0, None)
