"""Identification features on hand-made masks, slice-to-study aggregation and inference on real slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctriage.identify import (
    Identification,
    IdentificationModel,
    identify,
    lesion_features,
    model_inputs,
)
from ctriage.models.registry import PACKAGE_MODEL_DIR, ModelNotFoundError, load_model

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MEDSEG = DATA / "medseg_infnet_2d" / "TrainingSet" / "MultiClassInfection-Train"
LUNA = DATA / "identification_slices" / "ucsd_luna16_noncovid" / "NonCOVID"


def two_lungs(shape: tuple[int, int] = (20, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Right lung = rows 5..14, cols 5..14 (image left); left lung = rows 5..14, cols 25..34; 100 px each."""
    right = np.zeros(shape, bool)
    left = np.zeros(shape, bool)
    right[5:15, 5:15] = True
    left[5:15, 25:35] = True
    return left, right


def test_features_of_a_hand_made_slice() -> None:
    left, right = two_lungs()
    lesion = np.zeros(left.shape, np.uint8)
    lesion[13:15, 25:35] = 1  # left lung: 20 px GGO, its two posterior rows
    lesion[9, 5:10] = 2  # right lung: 5 px consolidation on the middle row, from the lateral edge
    f = lesion_features(lesion, left, right, (2.0, 2.0))  # 2 mm pixels: depth is measured on this very grid
    assert f["left_ratio"] == pytest.approx(0.20)
    assert f["right_ratio"] == pytest.approx(0.05)
    assert f["lesion_ratio"] == pytest.approx(25 / 200)
    assert (f["max_lung_ratio"], f["min_lung_ratio"], f["bilateral"]) == (pytest.approx(0.2), pytest.approx(0.05), 1.0)
    assert f["ggo_share"] == pytest.approx(20 / 25)
    # depth 1 px (relative 1/5 <= 1/3): left row 14 (10 px) + row 13's two edge px; right col 5 (1 px)
    assert f["peripheral_share"] == pytest.approx(13 / 25)
    # behind the lung's mean row 9.5: the 20 left px; row 9 is not
    assert f["posterior_share"] == pytest.approx(20 / 25)
    assert f["lower_zone_share"] == 0.0  # a single slice sits in the middle zone


def test_slice_is_a_volume_of_one_slice_and_empty_lesion_gives_zeros() -> None:
    left, right = two_lungs()
    lesion = np.zeros(left.shape, np.uint8)
    lesion[6:9, 26:30] = 1
    assert lesion_features(lesion, left, right, (1.0, 1.0)) == lesion_features(
        lesion[None], left[None], right[None], (2.0, 1.0, 1.0)
    )
    empty = lesion_features(np.zeros_like(lesion), left, right, (1.0, 1.0))
    assert all(value == 0.0 for value in empty.values())


def test_lower_zone_share_over_the_lung_z_extent() -> None:
    left, right = two_lungs()
    left3, right3 = np.repeat(left[None], 9, 0), np.repeat(right[None], 9, 0)
    lesion = np.zeros(left3.shape, np.uint8)
    lesion[6, 6:8, 26:30] = 1  # slice 6 of 0..8: centre 6.5 / 9 > 2/3 -> lower zone (8 px)
    lesion[5, 6:8, 26:30] = 1  # slice 5: 5.5 / 9 < 2/3 -> not (8 px)
    assert lesion_features(lesion, left3, right3, (2.0, 1.0, 1.0))["lower_zone_share"] == pytest.approx(0.5)


def test_model_inputs_order_and_log_transform() -> None:
    values = model_inputs({"lesion_ratio": 0.099, "ggo_share": 0.5}, ["ggo_share", "log_lesion_ratio"])
    assert values.dtype == np.float32
    assert values.tolist() == pytest.approx([0.5, -1.0])


@pytest.fixture(scope="module")
def model() -> IdentificationModel:
    try:
        return IdentificationModel()
    except ModelNotFoundError as error:
        pytest.skip(f"identification model not installed: {error}")


def test_identify_on_real_slices_with_reference_lesion_masks(model: IdentificationModel) -> None:
    """Radiologist GGO/consolidation masks of MedSeg COVID-19 slices vs LUNA16 slices without lesions."""
    if not MEDSEG.is_dir() or not LUNA.is_dir():
        pytest.skip(f"shared real data not found under {DATA.resolve()}")
    from ctriage.datasets import load_gray
    from ctriage.evaluate.identification import lung_mask_2d

    covid = []
    for name in ("0", "1", "3"):  # slices where both lungs are in view
        left, right = lung_mask_2d(load_gray(MEDSEG / "Imgs" / f"{name}.jpg"))
        covid.append(identify(_palette(MEDSEG / "GT" / f"{name}.png"), left, right, (1.0, 1.0), model=model))
    luna_path = sorted(LUNA.iterdir())[0]
    left, right = lung_mask_2d(load_gray(luna_path))
    clean = identify(np.zeros(left.shape, np.uint8), left, right, (1.0, 1.0), model=model)
    card = json.loads((PACKAGE_MODEL_DIR / "cards" / "identification.json").read_text())
    for result in [*covid, clean]:
        assert isinstance(result, Identification)
        assert 0.0 <= result.probability <= 1.0
        assert result.positive == (result.probability >= result.threshold)
        assert result.model_version == card["version"]  # the shipped card, read independently of the model
        assert result.threshold == pytest.approx(card["operating_point"]["threshold"])
    assert min(r.probability for r in covid) > clean.probability
    assert all(r.positive for r in covid)  # each above the card's operating point
    assert not clean.positive


def _palette(path: Path) -> np.ndarray:
    """Palette PNG indices (0 bg, 1 GGO, 2 consolidation) as uint8."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image, np.uint8)


def test_identify_on_a_real_slice_with_the_lesion_model(model: IdentificationModel) -> None:
    try:
        load_model("lesions")
    except ModelNotFoundError as error:
        pytest.skip(f"lesion model not installed: {error}")
    if not MEDSEG.is_dir():
        pytest.skip(f"shared real data not found under {DATA.resolve()}")
    from ctriage.evaluate.identification import lesion_model_segmenter, slice_masks

    lesion, left, right = slice_masks(MEDSEG / "Imgs" / "0.jpg", lesion_model_segmenter())
    result = identify(lesion, left, right, (1.0, 1.0), model=model)
    assert 0.0 <= result.probability <= 1.0
    assert result.features["lesion_ratio"] > 0.0
    assert result.positive  # a radiologist-labelled COVID-19 slice, segmented by the shipped lesion model


def test_study_is_scored_as_one_volume(model: IdentificationModel) -> None:
    """The study probability is the model's on the whole volume's features, so the pattern over all slices
    counts: the same lesion voxels spread over both lungs' periphery score above the same amount in one lung's
    core (bilateral, peripheral), and a volume of one slice scores as that slice."""
    left, right = two_lungs((40, 40))
    left3, right3 = np.repeat(left[None], 6, 0), np.repeat(right[None], 6, 0)
    spread = np.zeros(left3.shape, np.uint8)
    spread[:, 14, 5:15] = 1  # right lung's posterior edge row on every slice: 60 px
    spread[:, 14, 25:35] = 1  # left lung's: 60 px
    core = np.zeros(left3.shape, np.uint8)
    core[:, 8:11, 26:30] = 1  # 12 px per slice in the left lung's middle, 72 px
    core[:4, 8:11, 30:34] = 1  # 48 more: 120 px in all, as the spread mask
    assert (spread > 0).sum() == (core > 0).sum() == 120
    spacing = (2.0, 2.0, 2.0)  # 2 mm pixels: depth is measured on this very grid
    bilateral_peripheral = identify(spread, left3, right3, spacing, model=model)
    one_core = identify(core, left3, right3, spacing, model=model)
    assert bilateral_peripheral.probability > one_core.probability
    expected = model.predict(model_inputs(lesion_features(spread, left3, right3, spacing), model.input_names)[None])
    assert bilateral_peripheral.probability == pytest.approx(float(expected[0]))
    one_slice = identify(spread[0], left, right, spacing[1:], model=model)
    assert one_slice.probability == pytest.approx(identify(spread[:1], left3[:1], right3[:1], spacing,
                                                           model=model).probability)
