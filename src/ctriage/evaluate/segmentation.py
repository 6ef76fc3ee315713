"""Lesion segmentation evaluation on 2D slice folders in the Inf-Net layout (read by :mod:`ctriage.datasets`).

Reference masks are palette (or grey) PNGs with 0 bg / 1 GGO / 2 consolidation, or binary 0/255 PNGs (lesion vs
not; then only the binary lesion scores are defined). Images are 8-bit lung-window slices cropped to the lungs;
the model sees ``image / 255``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ctriage.datasets import load_gray, paired_files, read_reference
from ctriage.evaluate.metrics import dice, sensitivity_specificity
from ctriage.labels import LesionLabel
from ctriage.lesions import INFERENCE_BATCH, predict_labels
from ctriage.models.registry import ModelHandle

METRICS = ("dice_lesion", "dice_ggo", "dice_consolidation", "sensitivity", "specificity")


def score_image(reference: np.ndarray, multiclass: bool, predicted: np.ndarray) -> dict[str, float]:
    """Dice (lesion, GGO, consolidation; NaN for GGO/consolidation on binary references) and binary
    lesion sensitivity / specificity of a predicted 0/1/2 map against a reference map."""
    sensitivity, specificity = sensitivity_specificity(reference > 0, predicted > 0)
    nan = float("nan")
    return {
        "dice_lesion": dice(reference > 0, predicted > 0),
        "dice_ggo": dice(reference == LesionLabel.GGO, predicted == LesionLabel.GGO) if multiclass else nan,
        "dice_consolidation": (
            dice(reference == LesionLabel.CONSOLIDATION, predicted == LesionLabel.CONSOLIDATION) if multiclass else nan
        ),
        "sensitivity": sensitivity,
        "specificity": specificity,
    }


def defined_or_none(value: float) -> float | None:
    """``value``, or None where it is NaN (undefined: no positives, or no class labels in the reference)."""
    return None if math.isnan(value) else value


def mean_scores(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per-metric mean over images, skipping undefined (None) values; None where no image defines the metric."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        values = [r[metric] for r in rows if r[metric] is not None]
        out[metric] = float(np.mean(values)) if values else None
    return out


def pooled_dice(pairs: list[tuple[np.ndarray, bool, np.ndarray]]) -> dict[str, float | None]:
    """Dice over all pixels of all images at once, from (reference, multiclass, predicted) maps; GGO and
    consolidation over the multi-class references only (None without any)."""
    reference = np.concatenate([r.ravel() for r, _, _ in pairs])
    predicted = np.concatenate([p.ravel() for _, _, p in pairs])
    out: dict[str, float | None] = {"dice_lesion": dice(reference > 0, predicted > 0)}
    multi = [(r, m, p) for r, m, p in pairs if m]
    ref_multi = np.concatenate([r.ravel() for r, _, _ in multi]) if multi else None
    pred_multi = np.concatenate([p.ravel() for _, _, p in multi]) if multi else None
    for label, name in ((LesionLabel.GGO, "dice_ggo"), (LesionLabel.CONSOLIDATION, "dice_consolidation")):
        out[name] = None if ref_multi is None else dice(ref_multi == label, pred_multi == label)
    return out


def evaluate_folder(
    images_dir: Path,
    masks_dir: Path,
    model: ModelHandle,
    names: list[str] | None = None,
    batch_size: int = INFERENCE_BATCH,
) -> dict[str, Any]:
    """Run ``model`` on every image with a mask (or only the stems in ``names``) at the original slice size.

    Returns {"model_version", "n_images", "images": [{"name", metrics...}], "mean": {metric: mean over images},
    "pooled": {Dice over all pixels at once}}; undefined values are None.
    """
    pairs = [(i, m) for i, m in paired_files(images_dir, masks_dir) if names is None or i.stem in names]
    if not pairs:
        raise FileNotFoundError(f"no image/mask pairs in {images_dir} and {masks_dir}")
    planes = [load_gray(i).astype(np.float32) / 255.0 for i, _ in pairs]
    rows, maps = [], []
    for (image_path, mask_path), (predicted, _) in zip(pairs, predict_labels(model, planes, batch_size), strict=True):
        reference, multiclass = read_reference(mask_path)
        if reference.shape != predicted.shape:
            raise ValueError(f"{mask_path.name}: mask {reference.shape} vs image {predicted.shape}")
        maps.append((reference, multiclass, predicted))
        scores = score_image(reference, multiclass, predicted)
        rows.append({"name": image_path.stem, **{k: defined_or_none(v) for k, v in scores.items()}})
    return {"model_version": model.version, "n_images": len(rows), "images": rows, "mean": mean_scores(rows),
            "pooled": pooled_dice(maps)}
