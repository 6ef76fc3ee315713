"""Identification datasets (public layouts, 2D lung masks) and the evaluate severity command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ctriage.datasets import load_gray, read_labels_csv, sars_cov2_ct, ucsd_covid_ct
from ctriage.evaluate.cli import app
from ctriage.evaluate.identification import SliceScores, lung_mask_2d, pseudo_hu, summarize
from ctriage.preprocess import LESION_INPUT_WINDOW_HU, window

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SLICES = DATA / "identification_slices"


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_ucsd_layout_with_split_lists_and_noncovid_meta(tmp_path: Path) -> None:
    _png(tmp_path / "Images-processed" / "CT_COVID" / "a%0.png")
    _png(tmp_path / "Images-processed" / "CT_COVID" / "a%1.png")
    _png(tmp_path / "Images-processed" / "CT_NonCOVID" / "7.png")
    (tmp_path / "Data-split" / "COVID").mkdir(parents=True)
    (tmp_path / "Data-split" / "NonCOVID").mkdir(parents=True)
    (tmp_path / "Data-split" / "COVID" / "testCT_COVID.txt").write_text("a%0.png\na%1.png\n")
    (tmp_path / "Data-split" / "NonCOVID" / "trainCT_NonCOVID.txt").write_text("7.png\n")
    (tmp_path / "NonCOVID-CT-MetaInfo.csv").write_text("image name,patient id\n7.png,medpix_12\n")
    items = {i.path.name: i for i in ucsd_covid_ct(tmp_path)}
    assert (items["a%0.png"].label, items["a%0.png"].split) == (1, "test")
    assert items["a%0.png"].patient_id == items["a%1.png"].patient_id  # slices of one figure stay together
    assert (items["7.png"].label, items["7.png"].split, items["7.png"].patient_id) == (0, "train", "ucsd_0_medpix_12")


def test_sars_cov2_layout(tmp_path: Path) -> None:
    _png(tmp_path / "COVID" / "Covid (1).png")
    _png(tmp_path / "non-COVID" / "Non-Covid (1).png")
    items = sars_cov2_ct(tmp_path)
    assert sorted(i.label for i in items) == [0, 1]
    assert len({i.patient_id for i in items}) == 2


def test_labels_csv_defaults_patient_to_path(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label\nx.png,1\n")
    (item,) = read_labels_csv(tmp_path / "labels.csv", tmp_path)
    assert (item.path, item.label, item.patient_id) == (tmp_path / "x.png", 1, "x.png")


def test_pseudo_hu_inverts_the_lesion_window() -> None:
    assert pseudo_hu(np.array([0, 255], np.uint8)).tolist() == pytest.approx(list(LESION_INPUT_WINDOW_HU))
    gray = np.arange(256, dtype=np.uint8)
    assert np.array_equal(np.round(window(pseudo_hu(gray), LESION_INPUT_WINDOW_HU) * 255).astype(np.uint8), gray)


def test_lung_mask_on_a_real_luna16_slice() -> None:
    folder = SLICES / "ucsd_luna16_noncovid" / "NonCOVID"
    if not folder.is_dir():
        pytest.skip(f"shared real data not found under {DATA.resolve()}")
    gray = load_gray(sorted(folder.iterdir())[0])
    left, right = lung_mask_2d(gray)
    columns = np.arange(gray.shape[1])
    assert 0.03 < left.mean() < 0.3 and 0.03 < right.mean() < 0.3
    assert not (left & right).any()
    assert columns[left.any(axis=0)].mean() > columns[right.any(axis=0)].mean()  # patient's left on image right


def test_evaluate_severity_command(tmp_path: Path) -> None:
    csv_path = tmp_path / "severity.csv"
    csv_path.write_text("study,predicted,reference\na,1,2\nb,2,3\nc,4,4\nd,3,5\n")
    out = tmp_path / "severity.json"
    result = CliRunner().invoke(app, ["severity", "--csv", str(csv_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    # ranks predicted 1 2 4 3, reference 1 2 3 4: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert summary["spearman_rho"] == pytest.approx(0.8)
    # differences -1 -1 0 -2: bias -1, SD sqrt(2/3)
    assert summary["bland_altman"]["bias"] == pytest.approx(-1.0)
    assert summary["bland_altman"]["upper"] == pytest.approx(-1.0 + 1.96 * np.sqrt(2 / 3))


def test_summarize_scores_single_class_sources_against_the_other_class() -> None:
    scores = SliceScores(
        probabilities=np.array([0.9, 0.6, 0.4, 0.2, 0.1, 0.7]),
        labels=np.array([1, 1, 0, 0, 0, 0]),
        patients=np.array(["p1", "p2", "n1", "n2", "l1", "l2"]),
        sources=np.array(["papers", "papers", "papers", "papers", "scanner", "scanner"]),
        threshold=0.5,
        model_version="test",
    )
    summary = summarize(scores, n_resamples=50)
    assert summary["per_source"]["papers"]["auc"] == 1.0
    # scanner negatives 0.1, 0.7 against positives 0.9, 0.6: 3 of 4 pairs ordered
    scanner = summary["per_source"]["scanner"]
    assert (scanner["auc"], scanner["n_positive"], scanner["n_negative"]) == (0.75, 2, 2)
    assert (scanner["sensitivity"], scanner["specificity"]) == (1.0, 0.5)
    assert summary["all"]["auc"] == pytest.approx(7 / 8)
