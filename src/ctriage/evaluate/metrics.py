"""Metrics over numpy arrays: mask overlap, confusion-based rates, ROC, agreement, rank correlation."""

from __future__ import annotations

from collections.abc import Callable

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


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic P(pos > neg) + 0.5 P(tie); NaN if a class is empty."""
    labels = np.asarray(labels, bool).ravel()
    scores = np.asarray(scores, float).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # scipy.stats takes about a second to import: only when ranking

    ranks = rankdata(scores)  # average ranks: a tie counts one half
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds) for the rule ``score >= threshold``.

    Thresholds are the distinct scores in decreasing order, preceded by +inf (nothing called positive).
    """
    labels = np.asarray(labels, bool).ravel()
    scores = np.asarray(scores, float).ravel()
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    n_pos = max(int(labels.sum()), 1)
    n_neg = max(int((~labels).sum()), 1)
    called = scores[None, :] >= thresholds[:, None]
    tpr = (called & labels[None, :]).sum(axis=1) / n_pos
    fpr = (called & ~labels[None, :]).sum(axis=1) / n_neg
    return fpr, tpr, thresholds


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling rows or whole ``groups``.

    Resamples where the statistic is NaN (e.g. a class missing for AUC) are dropped.
    """
    rng = np.random.default_rng(seed)
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    values = []
    for _ in range(n_resamples):
        picked = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[i] for i in picked])
        value = statistic(*(a[rows] for a in arrays))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation rho (Pearson correlation of average ranks); NaN if either is constant."""
    from scipy.stats import rankdata

    rank_x = rankdata(np.asarray(x, float).ravel())
    rank_y = rankdata(np.asarray(y, float).ravel())
    if rank_x.std() == 0 or rank_y.std() == 0:
        return float("nan")
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def bland_altman(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(bias, lower, upper): mean of predicted - reference, and limits bias -/+ 1.96 SD (ddof=1)."""
    difference = np.asarray(predicted, float).ravel() - np.asarray(reference, float).ravel()
    bias = float(difference.mean())
    spread = 1.96 * float(difference.std(ddof=1)) if difference.size > 1 else 0.0
    return bias, bias - spread, bias + spread


def operating_point(labels: np.ndarray, scores: np.ndarray, min_sensitivity: float = 0.9) -> float:
    """Threshold (positive when ``score >= threshold``) of highest specificity with sensitivity >= target.

    Triage favours not missing COVID-19, so the rule is "max specificity subject to sensitivity >=
    ``min_sensitivity``" rather than Youden's J; among equal specificities the highest threshold wins.
    """
    fpr, tpr, thresholds = roc_curve(labels, scores)
    allowed = np.flatnonzero(tpr >= min_sensitivity)
    best = allowed[np.argmin(fpr[allowed])]  # fpr never decreases: argmin is the highest such threshold
    return float(thresholds[best])


def roc_summary(
    labels: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray, n_resamples: int = 2000
) -> dict[str, object]:
    """ROC AUC with a 95 % bootstrap interval over ``groups`` (patients), sensitivity and specificity at
    ``threshold`` (positive: score >= threshold), and the class counts."""
    labels = np.asarray(labels)
    sensitivity, specificity = sensitivity_specificity(labels == 1, np.asarray(scores) >= threshold)
    low, high = bootstrap_ci(roc_auc, labels, scores, n_resamples=n_resamples, groups=groups)
    return {"auc": roc_auc(labels, scores), "auc_ci95": [low, high], "sensitivity": sensitivity,
            "specificity": specificity, "n_positive": int(labels.sum()), "n_negative": int((labels == 0).sum())}
