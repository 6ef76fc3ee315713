"""Lesion segmentation (0 background, 1 ground-glass opacity, 2 consolidation) over the lung slices of a CT.

Each axial slice that contains lung is cropped to the lung bounding box plus a margin, windowed with
``LESION_INPUT_WINDOW_HU`` to [0, 1], resized to the model's square input, run through the ONNX model in
batches; the class map is resized back onto the crop and the slice's lesion probability is read off the
logits on the model grid. Labels are kept inside the lung mask only.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cc3d
import numpy as np
from PIL import Image

from ctriage.labels import LesionLabel
from ctriage.models.registry import ModelHandle, load_model
from ctriage.preprocess import LESION_INPUT_WINDOW_HU, WorkGrid, voxels_per_slice, window
from ctriage.system import available_cores

LESION_MODEL_NAME = "lesions"
INFERENCE_BATCH = 4  # slices per model run: 2 to 8 ran alike on 2 cores (one run per core at a time)
CROP_MARGIN_MM = 10.0  # training slices are lung crops that keep a rim of chest wall
MIN_CROP_MM = 60.0  # do not blow tiny apical lung sections up to the full model input


@dataclass(frozen=True)
class LesionResult:
    """``mask`` uint8 (z, y, x) of :class:`LesionLabel` values (0 bg, 1 GGO, 2 consolidation), inside the lung
    mask only; ``slice_probability`` float32 (z,): max lesion probability over the slice's lung pixels (0 without lung);
    ``model_version``: the lesion model card's version."""

    mask: np.ndarray
    slice_probability: np.ndarray
    model_version: str


def resize_plane(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 (h, w) plane to ``shape`` = (rows, cols)."""
    if plane.shape == shape:
        return plane.astype(np.float32, copy=False)
    image = Image.fromarray(np.ascontiguousarray(plane, np.float32), mode="F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


def class_map(logits: np.ndarray, min_probability: float | None = None) -> np.ndarray:
    """(3, H, W) logits -> class map uint8 (H, W): by argmax, ties to the lower class; with ``min_probability``,
    lesion where P(GGO) + P(consolidation) >= ``min_probability``, as the larger of the two."""
    background, ggo, consolidation = logits
    labels = np.where(consolidation > ggo, np.uint8(LesionLabel.CONSOLIDATION), np.uint8(LesionLabel.GGO))
    if min_probability is None:
        labels[np.maximum(ggo, consolidation) <= background] = LesionLabel.BACKGROUND
    else:
        lesion_logit = np.logaddexp(ggo, consolidation) - background
        labels[lesion_logit < np.log(min_probability / (1.0 - min_probability))] = LesionLabel.BACKGROUND
    return labels


def lesion_threshold(model: ModelHandle) -> float | None:
    """The model card's operating point for lesion pixels (``operating_point.lesion_probability``); None: argmax."""
    value = (model.card.get("operating_point") or {}).get("lesion_probability")
    return None if value is None else float(value)


def max_lesion_probability(logits: np.ndarray, region: np.ndarray | None = None) -> float:
    """Highest P(GGO) + P(consolidation) over the ``region`` (bool (H, W); None = all) of (3, H, W) logits.

    P(lesion) = sigmoid(logaddexp(GGO, consolidation) - background); as logaddexp(a, b) <= max(a, b) + log 2,
    only pixels within log 2 of the best max(a, b) - background need the exact value.
    """
    background, ggo, consolidation = logits
    upper = np.maximum(ggo, consolidation) - background
    if region is not None:
        if not region.any():
            return 0.0
        upper = np.where(region, upper, -np.inf)
    near = upper >= upper.max() - np.log(2.0)
    best = float((np.logaddexp(ggo[near], consolidation[near]) - background[near]).max())
    return float(np.exp(-np.logaddexp(0.0, -best)))  # sigmoid, safe for large |best|


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 (h, w) label map to ``shape`` = (rows, cols)."""
    if labels.shape == shape:
        return labels
    return np.asarray(Image.fromarray(labels).resize((shape[1], shape[0]), Image.NEAREST), dtype=np.uint8)


def predict_labels(
    model: ModelHandle,
    planes: list[np.ndarray],
    batch_size: int = INFERENCE_BATCH,
    regions: list[np.ndarray] | None = None,
    threads: int | None = None,
) -> list[tuple[np.ndarray, float]]:
    """For each [0, 1] float plane (h, w): its class map uint8 0/1/2 at (h, w) and the highest lesion
    probability over ``regions[i]`` (bool (h, w); default the whole plane), see :func:`max_lesion_probability`.

    Planes are resized bilinearly to the model's square input and run in batches, ``threads`` batches at a time
    (default: one per available core; the model session uses one core per run); class maps are resized back
    by nearest neighbour.
    """
    starts = range(0, len(planes), batch_size)
    regions = regions if regions is not None else [None] * len(planes)

    def batch(start: int) -> list[tuple[np.ndarray, float]]:
        return _predict_batch(model, planes[start:start + batch_size], regions[start:start + batch_size])

    threads = available_cores() if threads is None else max(1, threads)
    if threads == 1 or len(starts) < 2:
        return [item for start in starts for item in batch(start)]
    with ThreadPoolExecutor(threads, thread_name_prefix="ctriage-inference") as pool:
        return [item for items in pool.map(batch, starts) for item in items]


def _predict_batch(
    model: ModelHandle, planes: list[np.ndarray], regions: list[np.ndarray | None]
) -> list[tuple[np.ndarray, float]]:
    """:func:`predict_labels` of one batch."""
    size, threshold = model.input_size, lesion_threshold(model)
    logits = model.run(np.stack([resize_plane(p, (size, size)) for p in planes])[:, None])
    out = []
    for plane, region, plane_logits in zip(planes, regions, logits, strict=True):
        on_grid = None if region is None or region.all() else resize_labels(region.view(np.uint8), (size, size)) > 0
        labels = resize_labels(class_map(plane_logits, threshold), plane.shape)
        out.append((labels, max_lesion_probability(plane_logits, on_grid)))
    return out


def crop_box(lung_slice: np.ndarray, spacing_yx_mm: tuple[float, float]) -> tuple[slice, slice]:
    """Bounding box of a 2D lung mask plus ``CROP_MARGIN_MM``, at least ``MIN_CROP_MM`` wide, inside the slice."""
    box = []
    for axis, spacing in enumerate(spacing_yx_mm):
        hits = np.flatnonzero(lung_slice.any(axis=1 - axis))
        n = lung_slice.shape[axis]
        margin = int(round(CROP_MARGIN_MM / spacing))
        low, high = hits[0] - margin, hits[-1] + 1 + margin
        grow = max(0, int(round(MIN_CROP_MM / spacing)) - (high - low))
        low, high = low - grow // 2, high + grow - grow // 2
        box.append(slice(max(0, low), min(n, high)))
    return box[0], box[1]


def segment_lesions(
    hu: np.ndarray,
    lung_mask: np.ndarray,
    spacing_mm: tuple[float, float, float],
    model: ModelHandle | None = None,
    batch_size: int = INFERENCE_BATCH,
    window_hu: tuple[float, float] = LESION_INPUT_WINDOW_HU,
) -> LesionResult:
    """Segment GGO and consolidation in ``hu`` (int16, z-y-x) inside ``lung_mask`` (bool, z-y-x).

    ``spacing_mm`` = (z, y, x) voxel size in mm sets the crop margin; ``model`` defaults to the registry's
    "lesions" model; ``window_hu`` (low, high) maps HU onto the model's [0, 1] input (calibration studies
    only: the model was trained for the default). Only slices with lung are run.
    """
    if hu.shape != lung_mask.shape:
        raise ValueError(f"hu {hu.shape} and lung_mask {lung_mask.shape} differ in shape")
    model = model or load_model(LESION_MODEL_NAME)
    mask = np.zeros(hu.shape, np.uint8)
    slice_probability = np.zeros(hu.shape[0], np.float32)
    crops = lung_crops(hu, lung_mask, spacing_mm, window_hu)
    predictions = predict_labels(model, [c.plane for c in crops], batch_size, regions=[c.lung for c in crops])
    for crop, (labels, probability) in zip(crops, predictions, strict=True):
        # all: the crop is inside the area
        mask[crop.z][crop.box] = labels if crop.lung.all() else np.where(crop.lung, labels, 0)
        slice_probability[crop.z] = probability
    return LesionResult(mask, slice_probability, model.version)


@dataclass(frozen=True)
class LungCrop:
    """The model's view of one axial slice: slice index ``z``, ``box`` (rows, cols) in the slice, the windowed
    ``plane`` float32 [0, 1] and the ``lung`` mask (bool) inside the box."""

    z: int
    box: tuple[slice, slice]
    plane: np.ndarray
    lung: np.ndarray


def lung_crops(
    hu: np.ndarray,
    lung_mask: np.ndarray,
    spacing_mm: tuple[float, float, float],
    window_hu: tuple[float, float] = LESION_INPUT_WINDOW_HU,
) -> list[LungCrop]:
    """Every slice of ``hu`` (z, y, x) with lung in ``lung_mask``, cropped by :func:`crop_box` and windowed with
    ``window_hu``: what the lesion model sees (also what training on real CTs uses)."""
    lung_mask = np.asarray(lung_mask, bool)
    crops = []
    for z in np.flatnonzero(voxels_per_slice(lung_mask)):
        box = crop_box(lung_mask[z], (spacing_mm[1], spacing_mm[2]))
        crops.append(LungCrop(int(z), box, window(hu[z][box], window_hu), lung_mask[z][box]))
    return crops


MIN_LESION_ML = 0.4  # about a 9 mm sphere; smaller isolated findings are mostly model speckle (see docs/models.md)


def remove_small_lesions(labels: np.ndarray, grid: WorkGrid, min_volume_ml: float = MIN_LESION_ML) -> np.ndarray:
    """Drop lesions (GGO and consolidation together) of less than ``min_volume_ml`` mL from ``labels`` on the voxel
    grid ``grid``: a new array, or ``labels`` itself where none is that small.

    Lesions are the 26-connected parts of the working grid's in-plane blocks that hold lesion voxels (lesions
    closer than one block, about 2 mm, are one); a lesion's volume is the sum of its voxels at full resolution.
    """
    counts = grid.block_counts(labels > 0)
    components = cc3d.connected_components(counts > 0, connectivity=26)
    blocks = np.flatnonzero(counts)  # lesion blocks are few: sum over them only
    voxels = np.bincount(components.ravel()[blocks], weights=counts.ravel()[blocks], minlength=1)
    volume_ml = voxels * grid.voxel_ml
    small = volume_ml < min_volume_ml
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    grid.fill_blocks(out, small[components], LesionLabel.BACKGROUND)
    return out


MIN_STUDY_LESION_ML = 3.0  # less lesion than this in a whole study is no finding: see docs/models.md


def dismiss_minor_findings(
    labels: np.ndarray, grid: WorkGrid, min_total_ml: float = MIN_STUDY_LESION_ML
) -> tuple[np.ndarray, float]:
    """(labels, dismissed mL) for ``labels`` on the voxel grid ``grid``: a study whose lesions add up to less than
    ``min_total_ml`` mL reads as no finding, its labels all 0 and their volume returned; otherwise the labels
    unchanged and 0.0."""
    total_ml = float(np.count_nonzero(labels)) * grid.voxel_ml
    if total_ml == 0.0 or total_ml >= min_total_ml:
        return labels, 0.0
    return np.zeros_like(labels), total_ml
