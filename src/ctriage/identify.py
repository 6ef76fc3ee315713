"""Study-level COVID-19 identification from the lesion masks (burden, both lungs, distribution, GGO share).

The classifier is a small logistic model over features of the lesion mask; it is trained on 2D slices (a slice
is a volume of one slice) and applied to a study as one volume: :func:`lesion_features` over the whole study
(burden, both lungs, peripheral, posterior and GGO shares of all its lesion voxels). The pattern of a
pneumonia is a property of the whole chest; scoring the most involved slices alone (the earlier rule: mean of
the top 5 % of slice probabilities) called every real study with any lesion positive, a CAP and a tumour
above a COVID-19 study (docs/identification.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from ctriage.labels import LesionLabel, label_mask
from ctriage.models.registry import ModelHandle, load_model
from ctriage.preprocess import WorkGrid, voxels_per_slice

BILATERAL_MIN_RATIO = 0.005  # a lung counts as involved when at least 0.5 % of it is lesion
PERIPHERAL_DEPTH = 1.0 / 3.0  # outer third of each lung's in-plane depth (distance to the lung border)
LOG_RATIO_FLOOR = 1e-3
MODEL_NAME = "identification"


@dataclass(frozen=True)
class Identification:
    """COVID-19 identification of one study.

    ``probability`` in [0, 1]; ``positive`` is ``probability >= threshold`` (the model card's operating
    point); ``features`` are the whole-volume lesion features (ratios and shares in [0, 1]). ``reliable`` is
    False where the lungs are not wholly in the series (incomplete series, or too little lung found): the
    probability is then not a reading of the study.
    """

    probability: float
    threshold: float
    positive: bool
    model_version: str
    features: dict[str, float] = field(default_factory=dict)
    reliable: bool = True

    def to_dict(self) -> dict[str, object]:
        """As in report.json: ``reliable`` appears only where it is False."""
        out = asdict(self)
        if self.reliable:
            del out["reliable"]
        return out


def _as_volume(array: np.ndarray) -> np.ndarray:
    """View a 2D slice (H, W) as a volume of one slice (1, H, W); volumes pass through."""
    array = np.asarray(array)
    return array[None] if array.ndim == 2 else array


def _in_plane_spacing(spacing_mm: tuple[float, ...]) -> tuple[float, float]:
    """(y, x) spacing in mm from a (z, y, x) or (y, x) spacing."""
    return float(spacing_mm[-2]), float(spacing_mm[-1])


# Columns of the per-slice count table (voxels): lung and lesion per lung, GGO, peripheral, posterior.
LUNG_LEFT, LUNG_RIGHT, LESION_LEFT, LESION_RIGHT, N_GGO, N_PERIPHERAL, N_POSTERIOR = range(7)


def _lung_counts(lesion_blocks: np.ndarray, lung: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[int, int]:
    """(peripheral, posterior) lesion voxels of one lung on one slice of the working grid.

    ``lesion_blocks``: lesion voxels of that lung in each working-grid block (2D); ``lung``: the lung sampled
    on the working grid (2D bool), pixels ``pixel_mm`` (y, x) in mm. Peripheral: in-plane distance to the lung
    border / the slice's largest such distance in that lung <= ``PERIPHERAL_DEPTH`` (no absolute scale needed);
    posterior: a block row below the lung's mean row.
    """
    rows, cols = np.nonzero(lung)
    if rows.size == 0:
        return 0, 0
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    depth = ndimage.distance_transform_edt(np.pad(lung[box], 1), sampling=pixel_mm)[1:-1, 1:-1]
    weights = lesion_blocks[box]
    peripheral = weights[depth <= PERIPHERAL_DEPTH * max(float(depth.max()), 1e-6)].sum()
    below = np.arange(box[0].start, box[0].stop) > rows.mean()
    return int(peripheral), int(weights[below].sum())


def slice_counts(
    lesion_mask: np.ndarray, lung_left: np.ndarray, lung_right: np.ndarray, spacing_mm: tuple[float, ...]
) -> np.ndarray:
    """Per-slice voxel counts, int64 (z, 7), columns ``LUNG_LEFT`` .. ``N_POSTERIOR``; 2D input is one slice.

    Lesion voxels count only inside the lung masks. Peripheral and posterior lesion voxels are counted by
    their block of the working grid (about 2 mm in-plane, see :class:`ctriage.preprocess.WorkGrid`).
    """
    lesion_mask = _as_volume(lesion_mask)
    left = np.asarray(_as_volume(lung_left), bool)  # no copy of a bool mask
    right = np.asarray(_as_volume(lung_right), bool)
    spacing_yx = _in_plane_spacing(spacing_mm)
    grid = WorkGrid.of((1.0, *spacing_yx))  # in-plane blocks only: the slice spacing plays no part

    counts = np.zeros((lesion_mask.shape[0], 7), np.int64)
    counts[:, LUNG_LEFT] = voxels_per_slice(left)
    counts[:, LUNG_RIGHT] = voxels_per_slice(right)
    lesion = lesion_mask > 0
    counts[:, N_GGO] = voxels_per_slice(label_mask(lesion_mask, LesionLabel.GGO) & (left | right))
    for side, column in ((left, LESION_LEFT), (right, LESION_RIGHT)):
        lesion_in_lung = lesion & side
        counts[:, column] = voxels_per_slice(lesion_in_lung)
        blocks, lung_grid = grid.block_counts(lesion_in_lung), grid.subsample_in_plane(side)
        for z in np.flatnonzero(counts[:, column]):
            peripheral, posterior = _lung_counts(blocks[z], lung_grid[z], grid.pixel_mm)
            counts[z, N_PERIPHERAL] += peripheral
            counts[z, N_POSTERIOR] += posterior
    return counts


def features_from_counts(counts: np.ndarray) -> dict[str, float]:
    """:func:`lesion_features` from a (z, 7) count table; the lower zone is the inferior third of lung slices."""
    total = counts.sum(axis=0)
    ratios = [total[LESION_LEFT] / total[LUNG_LEFT] if total[LUNG_LEFT] else 0.0,
              total[LESION_RIGHT] / total[LUNG_RIGHT] if total[LUNG_RIGHT] else 0.0]
    n_lungs = int(total[LUNG_LEFT] + total[LUNG_RIGHT])
    per_slice_lesion = counts[:, LESION_LEFT] + counts[:, LESION_RIGHT]
    n_lesion = int(per_slice_lesion.sum())
    lung_slices = np.flatnonzero(counts[:, LUNG_LEFT] + counts[:, LUNG_RIGHT])
    lower = 0
    if n_lesion:
        z0, n_z = lung_slices[0], lung_slices[-1] - lung_slices[0] + 1
        position = (np.arange(counts.shape[0]) - z0 + 0.5) / n_z  # 0 superior .. 1 inferior, slice centres
        lower = int(per_slice_lesion[position > 2.0 / 3.0].sum())
    share = (lambda count: float(count) / n_lesion) if n_lesion else (lambda count: 0.0)
    return {
        "lesion_ratio": n_lesion / n_lungs if n_lungs else 0.0,
        "left_ratio": float(ratios[0]),
        "right_ratio": float(ratios[1]),
        "max_lung_ratio": float(max(ratios)),
        "min_lung_ratio": float(min(ratios)),
        "bilateral": float(min(ratios) >= BILATERAL_MIN_RATIO),
        "ggo_share": share(total[N_GGO]),
        "peripheral_share": share(total[N_PERIPHERAL]),
        "posterior_share": share(total[N_POSTERIOR]),
        "lower_zone_share": share(lower),
    }


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
    return features_from_counts(slice_counts(lesion_mask, lung_left, lung_right, spacing_mm))


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
    not use it. The study is scored as one volume (see the module docstring).
    """
    model = model or IdentificationModel()
    features = lesion_features(lesion_mask, lung_left, lung_right, spacing_mm)
    probability = float(model.predict(model_inputs(features, model.input_names)[None])[0])
    if slice_probability is not None and np.size(slice_probability):
        features["max_slice_probability"] = float(np.max(slice_probability))
    return Identification(
        probability=probability,
        threshold=model.threshold,
        positive=probability >= model.threshold,
        model_version=model.version,
        features=features,
    )
