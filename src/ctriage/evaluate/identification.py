"""Labelled 2D slices for COVID-19 identification (read by :mod:`ctriage.datasets`): a 2D lung mask and slice
scoring.

The slices are 8-bit lung-window renderings without HU; :func:`pseudo_hu` maps them back onto the lesion
model's input window so that the same study-level functions run on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image

from ctriage.datasets import LabelledSlice, load_gray
from ctriage.evaluate.metrics import roc_auc, roc_curve, roc_summary, sensitivity_specificity
from ctriage.identify import IdentificationModel, identify
from ctriage.preprocess import LESION_INPUT_WINDOW_HU

MIN_LUNG_AREA_FRACTION = 0.01  # a dark component smaller than 1 % of the image is not a lung
NOMINAL_FOV_MM = 350.0  # a chest CT's usual display field of view, for slices without spacing
CLOSING_FRACTION = 0.02  # closing radius as a fraction of the image's long side (takes in vessels, lesions)


def pseudo_hu(gray: np.ndarray) -> np.ndarray:
    """Invert the lesion model's lung window: 8-bit value v -> low + v / 255 * (high - low) HU (float32)."""
    low, high = LESION_INPUT_WINDOW_HU
    return (low + np.asarray(gray, np.float32) / 255.0 * (high - low)).astype(np.float32)


def lung_mask_2d(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) lung masks of an 8-bit axial slice in radiological view (patient's left on image right).

    Dark pixels (below Otsu's threshold) inside the convex hull of the largest bright region (the body; on a
    crop tight on the lungs, nearly the whole image) are lung candidates. The two largest candidates (each at
    least ``MIN_LUNG_AREA_FRACTION`` of the image) are closed and hole-filled (vessels, lesions) and assigned
    to a side by their centroid columns (the larger column is the left lung; a slice rotated by 90 degrees still
    gets one region per side); a single merged region is cut at the image's middle column. Each
    region gets its convex hull minus the anterior-medial quadrant, so consolidation along the chest wall
    counts as lung.
    """
    smooth = ndimage.gaussian_filter(np.asarray(gray, np.float32), 1.0)
    dark = smooth < threshold_otsu(smooth)
    tissue, count = ndimage.label(~dark)
    if count == 0:
        return np.zeros(dark.shape, bool), np.zeros(dark.shape, bool)
    body = convex_hull_image(tissue == np.argmax(np.bincount(tissue.ravel())[1:]) + 1)
    candidates = ndimage.binary_opening(dark & body, iterations=2)
    min_area = MIN_LUNG_AREA_FRACTION * dark.size
    labels, count = ndimage.label(candidates)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= min_area]
    radius = max(1, int(round(CLOSING_FRACTION * max(gray.shape))))
    structure = ndimage.generate_binary_structure(2, 1)
    structure = ndimage.iterate_structure(structure, radius)
    middle = dark.shape[1] / 2.0
    regions = []
    for index in keep:
        closed = ndimage.binary_closing(labels == index, structure, border_value=0)
        regions.append(_with_dense_periphery(ndimage.binary_fill_holes(closed), middle))
    if not regions:
        return np.zeros(dark.shape, bool), np.zeros(dark.shape, bool)
    if len(regions) == 1:
        on_left = (np.arange(dark.shape[1]) >= middle)[None, :]
        return regions[0] & on_left, regions[0] & ~on_left
    regions.sort(key=lambda region: np.nonzero(region)[1].mean())
    right, left = regions
    right &= ~left
    return left, right


def _with_dense_periphery(region: np.ndarray, middle: float) -> np.ndarray:
    """``region`` plus its convex hull, except the hull's anterior-medial part (heart, hilum).

    Dense lung along the chest wall (consolidation) is brighter than Otsu's threshold: only the hull adds it.
    """
    rows, columns = np.nonzero(region)
    hull = convex_hull_image(region)
    grid_rows, grid_columns = np.indices(region.shape)
    medial = (grid_columns > columns.mean()) if columns.mean() < middle else (grid_columns < columns.mean())
    anterior_medial = medial & (grid_rows < rows.mean())
    return region | (hull & ~anterior_medial)


SliceSegmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(pseudo-HU slice (H, W), lung mask (H, W) bool) -> lesion mask (H, W) uint8 0/1/2."""


def slice_masks(path: Path, segmenter: SliceSegmenter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lesion mask, left lung, right lung) of one image file, lesions from ``segmenter`` inside the lungs."""
    gray = load_gray(path)
    left, right = lung_mask_2d(gray)
    lesion = segmenter(pseudo_hu(gray), left | right)
    return lesion, left, right


def lesion_model_segmenter() -> SliceSegmenter:
    """Slice segmenter over :func:`ctriage.lesions.segment_lesions` (the installed lesion model).

    The slices carry no spacing: the pixel size is taken as ``NOMINAL_FOV_MM`` over the long side, which only
    sets the lesion model's crop margin (the features are ratios).
    """
    from ctriage.lesions import segment_lesions
    from ctriage.models.registry import load_model

    model = load_model("lesions")

    def segment(hu: np.ndarray, lung: np.ndarray) -> np.ndarray:
        pixel_mm = NOMINAL_FOV_MM / max(hu.shape)
        return segment_lesions(hu[None], lung[None], (1.0, pixel_mm, pixel_mm), model=model).mask[0]

    return segment


@dataclass(frozen=True)
class SliceScores:
    """Identification probabilities of labelled slices, with their labels, patient ids and sources."""

    probabilities: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    sources: np.ndarray
    threshold: float
    model_version: str


def score_slices(items: list[LabelledSlice], segmenter: SliceSegmenter, model: IdentificationModel) -> SliceScores:
    """Run lungs -> lesions -> :func:`ctriage.identify.identify` on every slice (a volume of one slice)."""
    probabilities = []
    for item in items:
        lesion, left, right = slice_masks(item.path, segmenter)
        probabilities.append(identify(lesion, left, right, (1.0, 1.0), model=model).probability)
    return SliceScores(
        probabilities=np.asarray(probabilities, float),
        labels=np.array([i.label for i in items], int),
        patients=np.array([i.patient_id for i in items]),
        sources=np.array([i.source for i in items]),
        threshold=model.threshold,
        model_version=model.version,
    )


def summarize(scores: SliceScores, n_resamples: int = 2000) -> dict[str, object]:
    """ROC AUC with a patient-level 95 % bootstrap interval, sensitivity/specificity at the model threshold,
    for all slices and per source; a source holding one class is scored against all slices of the other."""

    def rates(rows: np.ndarray) -> dict[str, object]:
        return roc_summary(scores.labels[rows], scores.probabilities[rows], scores.threshold, scores.patients[rows],
                           n_resamples)

    every = np.ones(scores.labels.size, bool)
    per_source = {}
    for name in sorted(set(scores.sources) - {""}):
        rows = scores.sources == name
        if len(set(scores.labels[rows])) == 1:  # one class only: against every slice of the other class
            rows = rows | (scores.labels != scores.labels[rows][0])
        per_source[name] = rates(rows)
    return {"model_version": scores.model_version, "threshold": scores.threshold, "all": rates(every),
            "per_source": per_source}


def save_roc_png(scores: SliceScores, path: Path) -> None:
    """ROC curve (all slices) with the operating point marked, as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(scores.labels, scores.probabilities)
    sensitivity, specificity = sensitivity_specificity(scores.labels == 1, scores.probabilities >= scores.threshold)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot(fpr, tpr, label=f"AUC {roc_auc(scores.labels, scores.probabilities):.3f}")
    axes.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axes.plot([1 - specificity], [sensitivity], "ro", label=f"threshold {scores.threshold:.3f}")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"COVID-19 identification ({scores.model_version})")
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
