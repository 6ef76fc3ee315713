"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctriage.evaluate.metrics import (
    bland_altman,
    bootstrap_ci,
    operating_point,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
    spearman,
)


def test_roc_auc_counts_pairs_and_half_ties() -> None:
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 -> 1/2) (0.5>0.1) = 3.5 / 4
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert roc_auc(labels, scores) == pytest.approx(0.875)


def test_roc_auc_perfect_inverted_and_undefined() -> None:
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert roc_auc([1, 1, 0], [0.1, 0.2, 0.3]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_roc_curve_matches_auc_by_trapezoids() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.7, 0.3])
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert thresholds[0] == np.inf and (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores))


def test_sensitivity_specificity_hand_case() -> None:
    # TP 2 of 3 positives, TN 1 of 2 negatives
    sens, spec = sensitivity_specificity([1, 1, 1, 0, 0], [1, 1, 0, 0, 1])
    assert (sens, spec) == (pytest.approx(2 / 3), 0.5)


def test_operating_point_is_max_specificity_at_target_sensitivity() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    # sensitivity >= 0.75 first reached at threshold 0.6 (3/4 positives, 1 false positive: 0.7)
    assert operating_point(labels, scores, min_sensitivity=0.75) == 0.6
    # sensitivity 1.0 needs threshold 0.3 (false positives 0.7, 0.4)
    assert operating_point(labels, scores, min_sensitivity=1.0) == 0.3


def test_spearman_hand_case_with_ties() -> None:
    # ranks x: 1 2 3 4, ranks y: 1 2.5 2.5 4 -> Pearson of ranks
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([10.0, 20.0, 20.0, 40.0])
    rx, ry = np.array([1, 2, 3, 4.0]), np.array([1, 2.5, 2.5, 4])
    expected = ((rx - rx.mean()) * (ry - ry.mean())).sum() / np.sqrt(
        ((rx - rx.mean()) ** 2).sum() * ((ry - ry.mean()) ** 2).sum()
    )
    assert spearman(x, y) == pytest.approx(expected)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # monotone but not linear: rho is exactly 1 (d_i = 0 in 1 - 6 sum d^2 / (n (n^2 - 1)))
    assert spearman([1, 2, 3, 4, 5], [1, 4, 9, 16, 100]) == pytest.approx(1.0)


def test_bland_altman_hand_case() -> None:
    # differences 1, 3 -> bias 2, SD (ddof 1) sqrt(2)
    bias, low, high = bland_altman([2.0, 5.0], [1.0, 2.0])
    assert bias == 2.0
    assert (low, high) == (pytest.approx(2 - 1.96 * np.sqrt(2)), pytest.approx(2 + 1.96 * np.sqrt(2)))


def test_bootstrap_ci_brackets_the_statistic_and_respects_groups() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(60), np.zeros(60)]
    scores = labels + rng.normal(0, 1.0, 120)
    auc = roc_auc(labels, scores)
    low, high = bootstrap_ci(roc_auc, labels, scores, n_resamples=300)
    assert low < auc < high and high - low < 0.3
    groups = np.repeat(np.arange(12), 10)  # 12 clusters of 10: wider interval than rows
    g_low, g_high = bootstrap_ci(roc_auc, labels, scores, n_resamples=300, groups=groups)
    assert g_low <= auc <= g_high
