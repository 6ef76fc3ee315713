"""Identification training helpers: patient folds, the logistic fit and its ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctriage.train.identification import fit_logistic, patient_folds


def test_patient_folds_keep_a_patient_in_one_fold_and_stratify() -> None:
    patients = np.array(["a", "a", "b", "c", "c", "c", "d", "e", "f", "g"])
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    folds = patient_folds(patients, labels, n_folds=2)
    for name in set(patients):
        assert len(set(folds[patients == name])) == 1
    assert sorted(np.bincount(folds[labels == 0])) == [2, 2]


def test_logistic_fit_recovers_the_direction_of_a_separating_feature() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(200)].astype(int)
    inputs = np.c_[labels * 2.0 + rng.normal(0, 1, 400), rng.normal(0, 1, 400)]
    model = fit_logistic(inputs, labels, l2=0.1)
    assert model.weights[0] > 1.0 and abs(model.weights[1]) < 0.3
    assert model.predict(np.array([[2.0, 0.0]]))[0] > 0.5 > model.predict(np.array([[0.0, 0.0]]))[0]


def test_onnx_export_matches_numpy(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from ctriage.train.identification import Logistic, export_logistic

    model = Logistic(weights=np.array([1.5, -0.5, 2.0]), bias=-0.25)
    path = tmp_path / "identification.onnx"
    export_logistic(model, path)
    inputs = np.array([[0.1, 0.2, 0.3], [-1.0, 0.0, 1.0]], np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probability = session.run(["probability"], {"features": inputs})[0]
    assert probability.shape == (2, 1)
    np.testing.assert_allclose(probability[:, 0], model.predict(inputs.astype(float)), rtol=1e-5)
