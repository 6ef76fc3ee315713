"""Study-level COVID-19 identification from the lesion masks (burden, both lungs, distribution, GGO share).

The classifier is a small logistic model over features of the lesion mask; it is trained on 2D slices (a slice
is a volume of one slice) and applied to a study slice by slice:

1. per axial slice whose lung area is at least ``MIN_SLICE_LUNG_FRACTION`` of the largest lung slice, compute
   :func:`lesion_features` and the model's probability;
2. the study probability is the mean of the highest ``TOP_SLICE_FRACTION`` of those slice probabilities (at
   least one slice): the most involved slices play the part of the slice a reader would have picked.

``Identification.features`` holds the same features over the whole volume, for the report.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from ctriage.models.registry import ModelHandle, load_model

MIN_SLICE_LUNG_FRACTION = 0.25
TOP_SLICE_FRACTION = 0.05
BILATERAL_MIN_RATIO = 0.005  # a lung counts as involved when at least 0.5 % of it is lesion
PERIPHERAL_DEPTH = 1.0 / 3.0  # outer third of each lung's in-plane depth (distance to the lung border)
LOG_RATIO_FLOOR = 1e-3
GGO = 1
MODEL_NAME = "identification"


@dataclass(frozen=True)
class Identification:
    """COVID-19 identification of one study.

    ``probability`` in [0, 1]; ``positive`` is ``probability >= threshold`` (the model card's operating
    point); ``features`` are the whole-volume lesion features (ratios and shares in [0, 1]).
    """

    probability: float
    threshold: float
    positive: bool
    model_version: str
    features: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _as_volume(array: np.ndarray) -> np.ndarray:
    """View a 2D slice (H, W) as a volume of one slice (1, H, W); volumes pass through."""
    array = np.asarray(array)
    return array[None] if array.ndim == 2 else array


def _in_plane_spacing(spacing_mm: tuple[float, ...]) -> tuple[float, float]:
    """(y, x) spacing in mm from a (z, y, x) or (y, x) spacing."""
    return float(spacing_mm[-2]), float(spacing_mm[-1])


def _peripheral_and_posterior(
    lesion: np.ndarray, lung: np.ndarray, spacing_yx_mm: tuple[float, float]
) -> tuple[int, int]:
    """Lesion voxels of one lung in its outer third of depth, and behind its centre row, summed over slices.

    Depth is the in-plane distance to the lung border divided by the slice's largest depth in that lung, so
    the rule needs no absolute scale; posterior means a larger y (row) index than the lung's mean row.
    """
    peripheral = posterior = 0
    for z in np.flatnonzero(lesion.any(axis=(1, 2))):
        depth = ndimage.distance_transform_edt(lung[z], sampling=spacing_yx_mm)
        relative = depth / depth.max()
        rows = np.nonzero(lung[z])[0]
        lesion_rows, lesion_cols = np.nonzero(lesion[z])
        peripheral += int((relative[lesion_rows, lesion_cols] <= PERIPHERAL_DEPTH).sum())
        posterior += int((lesion_rows > rows.mean()).sum())
    return peripheral, posterior


def lesion_features(
    lesion_mask: np.ndarray, lung_left: np.ndarray, lung_right: np.ndarray, spacing_mm: tuple[float, ...]
) -> dict[str, float]:
    """Features of a lesion mask (0 bg, 1 GGO, 2 consolidation) in left/right lung masks; 2D or 3D (z, y, x).

    Ratios are lesion voxels / lung voxels (per lung, both, max and min of the two lungs); ``bilateral`` is
    1.0 when both lungs are at least ``BILATERAL_MIN_RATIO`` involved; shares are fractions of lesion voxels:
    GGO (label 1), peripheral (outer third of in-plane depth), posterior (behind each lung's centre row) and
    lower zone (inferior third of the lungs' z-extent; a single slice sits in the middle zone, so 0.0). Shares
    are 0.0 without lesion. ``spacing_mm`` is (z, y, x) or (y, x) in mm; only in-plane anisotropy matters.
    """
    lesion_mask = _as_volume(lesion_mask)
    left = _as_volume(lung_left).astype(bool)
    right = _as_volume(lung_right).astype(bool)
    lungs = left | right
    lesion = (lesion_mask > 0) & lungs
    spacing_yx = _in_plane_spacing(spacing_mm)

    ratios = []
    peripheral = posterior = 0
    for lung in (left, right):
        n_lung = int(lung.sum())
        in_lung = lesion & lung
        ratios.append(int(in_lung.sum()) / n_lung if n_lung else 0.0)
        p, q = _peripheral_and_posterior(in_lung, lung, spacing_yx)
        peripheral, posterior = peripheral + p, posterior + q

    n_lesion = int(lesion.sum())
    lung_slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    lower = 0
    if n_lesion and lung_slices.size:
        z0, n_z = lung_slices[0], lung_slices[-1] - lung_slices[0] + 1
        position = (np.arange(lesion.shape[0]) - z0 + 0.5) / n_z  # 0 superior .. 1 inferior, slice centres
        lower = int(lesion.sum(axis=(1, 2))[position > 2.0 / 3.0].sum())

    n_lungs = int(lungs.sum())
    share = (lambda count: count / n_lesion) if n_lesion else (lambda count: 0.0)
    return {
        "lesion_ratio": n_lesion / n_lungs if n_lungs else 0.0,
        "left_ratio": ratios[0],
        "right_ratio": ratios[1],
        "max_lung_ratio": max(ratios),
        "min_lung_ratio": min(ratios),
        "bilateral": float(min(ratios) >= BILATERAL_MIN_RATIO),
        "ggo_share": share(int(((lesion_mask == GGO) & lesion).sum())),
        "peripheral_share": share(peripheral),
        "posterior_share": share(posterior),
        "lower_zone_share": share(lower),
    }


def model_inputs(features: dict[str, float], input_names: list[str]) -> np.ndarray:
    """The model's input vector (float32) from :func:`lesion_features`, in the card's ``input_names`` order.

    ``log_<name>`` is log10(feature + ``LOG_RATIO_FLOOR``), so ratios act on a multiplicative scale; other
    names are the features themselves.
    """
    values = []
    for name in input_names:
        if name.startswith("log_"):
            values.append(math.log10(features[name[4:]] + LOG_RATIO_FLOOR))
        else:
            values.append(features[name])
    return np.asarray(values, np.float32)


class IdentificationModel:
    """The logistic feature model: ONNX graph ("features" (N, F) -> "probability" (N, 1)) plus its card.

    ``handle`` defaults to the registry's "identification" model (``ModelNotFoundError``, a
    ``FileNotFoundError``, when none is installed).
    """

    def __init__(self, handle: ModelHandle | None = None) -> None:
        handle = handle or load_model(MODEL_NAME)
        self.input_names: list[str] = list(handle.card["inputs"]["features"])
        self.threshold = float(handle.card["operating_point"]["threshold"])
        self.version = handle.version
        self._session = handle.session

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities in [0, 1] for rows of ``inputs`` (N, F) built by :func:`model_inputs`."""
        batch = np.asarray(inputs, np.float32).reshape(-1, len(self.input_names))
        return self._session.run(["probability"], {"features": batch})[0].reshape(-1)


def slice_probabilities(
    lesion_mask: np.ndarray,
    lung_left: np.ndarray,
    lung_right: np.ndarray,
    spacing_mm: tuple[float, ...],
    model: IdentificationModel,
) -> tuple[np.ndarray, np.ndarray]:
    """(slice indices, probabilities) of slices with lung area >= ``MIN_SLICE_LUNG_FRACTION`` of max."""
    lesion_mask, left, right = _as_volume(lesion_mask), _as_volume(lung_left), _as_volume(lung_right)
    area = (left.astype(bool) | right.astype(bool)).sum(axis=(1, 2))
    if area.max() == 0:
        return np.zeros(0, int), np.zeros(0, np.float32)
    picked = np.flatnonzero(area >= MIN_SLICE_LUNG_FRACTION * area.max())
    rows = [
        model_inputs(lesion_features(lesion_mask[z], left[z], right[z], spacing_mm), model.input_names)
        for z in picked
    ]
    return picked, model.predict(np.stack(rows))


def aggregate(probabilities: np.ndarray) -> float:
    """Study probability: mean of the top ``TOP_SLICE_FRACTION`` of slice probabilities (>= 1); 0 if none."""
    if probabilities.size == 0:
        return 0.0
    k = max(1, int(round(TOP_SLICE_FRACTION * probabilities.size)))
    return float(np.sort(probabilities)[-k:].mean())


def identify(
    lesion_mask: np.ndarray,
    lung_left: np.ndarray,
    lung_right: np.ndarray,
    spacing_mm: tuple[float, ...],
    slice_probability: np.ndarray | None = None,
    model: IdentificationModel | None = None,
) -> Identification:
    """COVID-19 identification of a study (or a 2D slice) from its lesion and lung masks.

    ``lesion_mask`` uint8 (z, y, x) or (y, x): 0 bg, 1 GGO, 2 consolidation; ``lung_left``/``lung_right``
    boolean, same shape; ``spacing_mm`` (z, y, x) or (y, x). ``slice_probability`` (the lesion model's
    per-slice lesion probability) is carried into ``features`` as its maximum for the report; the model does
    not use it. The aggregation from slices to the study is described in the module docstring.
    """
    model = model or IdentificationModel()
    _, probabilities = slice_probabilities(lesion_mask, lung_left, lung_right, spacing_mm, model)
    probability = aggregate(probabilities)
    features = lesion_features(lesion_mask, lung_left, lung_right, spacing_mm)
    if slice_probability is not None and np.size(slice_probability):
        features["max_slice_probability"] = float(np.max(slice_probability))
    return Identification(
        probability=probability,
        threshold=model.threshold,
        positive=probability >= model.threshold,
        model_version=model.version,
        features=features,
    )
