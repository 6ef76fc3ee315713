"""Model registry: package models, CTRIAGE_MODEL_DIR precedence, session cache, card contents."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ctriage.models.registry import MODEL_DIR_ENV, PACKAGE_MODEL_DIR, ModelNotFoundError, load_model


def test_shipped_lesion_model_and_card():
    model = load_model("lesions")
    card = json.loads((PACKAGE_MODEL_DIR / "cards" / "lesions.json").read_text())  # the file, not model.card
    assert model.onnx_path == PACKAGE_MODEL_DIR / "weights" / "lesions.onnx"
    assert model.onnx_path.stat().st_size < 20e6
    assert model.version == card["version"]
    for key in ("data", "split", "validation", "date", "input", "training"):
        assert key in card
    assert card["validation"]["dice_lesion"] > 0 and card["validation"]["dice_ggo"] > 0
    logits = model.run(np.zeros((2, 1, model.input_size, model.input_size), np.float32))
    assert logits.shape == (2, 3, model.input_size, model.input_size) and logits.dtype == np.float32


def test_session_is_cached():
    assert load_model("lesions").session is load_model("lesions").session


def test_site_model_dir_takes_precedence(tmp_path, monkeypatch):
    (tmp_path / "cards").mkdir()
    shutil.copy(PACKAGE_MODEL_DIR / "weights" / "lesions.onnx", tmp_path / "lesions.onnx")
    card = json.loads((PACKAGE_MODEL_DIR / "cards" / "lesions.json").read_text())
    (tmp_path / "cards" / "lesions.json").write_text(json.dumps({**card, "version": "site-update-1"}))
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    model = load_model("lesions")
    assert model.version == "site-update-1" and model.onnx_path == tmp_path / "lesions.onnx"


def test_missing_model(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        load_model("no_such_model")
