"""Metrics over numpy arrays: overlap for masks, confusion-based rates for binary decisions."""

from __future__ import annotations

import numpy as np


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    reference = np.asarray(reference, bool)
    prediction = np.asarray(prediction, bool)
    total = int(reference.sum()) + int(prediction.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total


def sensitivity_specificity(reference: np.ndarray, prediction: np.ndarray) -> tuple[float, float]:
    """(sensitivity, specificity) of boolean ``prediction`` against boolean ``reference``; NaN where undefined."""
    reference = np.asarray(reference, bool).ravel()
    prediction = np.asarray(prediction, bool).ravel()
    positives = int(reference.sum())
    negatives = reference.size - positives
    true_pos = int(np.logical_and(reference, prediction).sum())
    true_neg = int(np.logical_and(~reference, ~prediction).sum())
    sensitivity = true_pos / positives if positives else float("nan")
    specificity = true_neg / negatives if negatives else float("nan")
    return sensitivity, specificity
