"""`ctriage evaluate lesions` on hand-made masks (palette 0/1/2 and binary 0/255) with a stub model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ctriage.datasets import read_reference
from ctriage.evaluate import cli
from ctriage.evaluate.segmentation import evaluate_folder

SIZE = 8


class LevelModel:
    """Stub lesion model with the ModelHandle interface: grey 0 -> bg, 128 -> GGO, 255 -> consolidation."""

    version = "stub-1"
    input_size = SIZE
    card: dict = {}  # no operating point: argmax

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([-50.0 * (batch - level) ** 2 for level in (0.0, 0.5, 1.0)], axis=1)


def write_case(root, binary_mask: bool):
    """One 8x8 slice: predicted GGO rows 0-3 x cols 0-3, predicted consolidation rows 4-7 x cols 4-7;
    reference GGO rows 0-3 x cols 0-5, reference consolidation rows 4-7 x cols 6-7."""
    (root / "Imgs").mkdir(parents=True)
    (root / "GT").mkdir()
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[:4, :4] = 128
    image[4:, 4:] = 255
    Image.fromarray(image).save(root / "Imgs" / "1.png")
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[:4, :6] = 1
    labels[4:, 6:] = 2
    if binary_mask:
        Image.fromarray((labels > 0).astype(np.uint8) * 255).save(root / "GT" / "1.png")
    else:
        palette = Image.fromarray(labels, mode="P")
        palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 - 3) * 3)
        palette.save(root / "GT" / "1.png")
    return root


def test_read_reference_palette_and_binary(tmp_path):
    labels, multiclass = read_reference(write_case(tmp_path / "p", binary_mask=False) / "GT" / "1.png")
    assert multiclass and labels.max() == 2 and (labels == 1).sum() == 24
    labels, multiclass = read_reference(write_case(tmp_path / "b", binary_mask=True) / "GT" / "1.png")
    assert not multiclass and set(np.unique(labels)) == {0, 1} and labels.sum() == 32


def test_dice_on_palette_masks(tmp_path):
    root = write_case(tmp_path, binary_mask=False)
    row = evaluate_folder(root / "Imgs", root / "GT", LevelModel())["images"][0]
    assert row["dice_ggo"] == pytest.approx(2 * 16 / (16 + 24))
    assert row["dice_consolidation"] == pytest.approx(2 * 8 / (16 + 8))
    assert row["dice_lesion"] == pytest.approx(2 * 24 / (32 + 32))
    assert row["sensitivity"] == pytest.approx(24 / 32) and row["specificity"] == pytest.approx(24 / 32)


def test_cli_on_binary_masks(tmp_path, monkeypatch):
    root = write_case(tmp_path, binary_mask=True)
    monkeypatch.setattr("ctriage.models.registry.load_model", lambda name: LevelModel())
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(cli.app, ["lesions", "--images", str(root / "Imgs"), "--masks", str(root / "GT"),
                                          "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "stub-1" in result.output and "n/a" in result.output
    report = json.loads(out.read_text())
    assert report["mean"]["dice_lesion"] == pytest.approx(0.75)
    assert report["mean"]["dice_ggo"] is None and report["images"][0]["dice_consolidation"] is None


def test_pooled_dice_weights_pixels_not_images(tmp_path):
    root = write_case(tmp_path / "a", binary_mask=False)
    (root / "Imgs" / "1.png").rename(root / "Imgs" / "2.png")  # a second, empty-reference image
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8), mode="P").save(root / "GT" / "2.png")
    write_case(tmp_path / "b", binary_mask=False)
    (tmp_path / "b" / "Imgs" / "1.png").rename(root / "Imgs" / "1.png")
    report = evaluate_folder(root / "Imgs", root / "GT", LevelModel())
    assert [r["name"] for r in report["images"]] == ["1", "2"]
    assert report["images"][1]["dice_lesion"] == 0.0  # 32 false-positive pixels on an empty reference
    assert report["mean"]["dice_lesion"] == pytest.approx(0.75 / 2)
    assert report["pooled"]["dice_lesion"] == pytest.approx(2 * 24 / (32 + 64))
