"""The analysis pipeline: CT volume -> lungs -> lesions -> identification -> severity, timed per stage."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctriage import __version__
from ctriage.io import CTVolume, StudySource, find_studies, load_study
from ctriage.io.nifti import mask_to_canonical
from ctriage.lungs import DENSE_LUNG_MIN_THICKNESS_MM, HULL_MARGIN_MM, LungMasks, add_dense_lung, segment_lungs
from ctriage.preprocess import upsample, work_grid_z_factor
from ctriage.severity import Severity, quantify

if TYPE_CHECKING:
    from ctriage.identify import Identification

Progress = Callable[[str], None]
MIN_PLAUSIBLE_LUNG_ML = 1000.0  # adult lungs hold several litres; far less means no (whole) chest in the scan


@dataclass
class StudyResult:
    """Everything ctriage knows about one study; ``to_dict`` is the content of report.json."""

    volume: CTVolume
    lung_left: np.ndarray
    lung_right: np.ndarray
    lesion_mask: np.ndarray
    severity: Severity
    identification: Identification | None = None
    lesion_source: str = ""
    analysed_slices: slice = field(default_factory=lambda: slice(0, None, 1))  # z slices analysed (analysis_slices)
    models: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def analysed_spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm of the analysed slices (``analysed_slices``)."""
        return grid_spacing_mm(self.volume.spacing_mm, self.analysed_slices)

    @cached_property
    def lung_labels(self) -> np.ndarray:
        """uint8 (z, y, x): 0 background, 1 right lung, 2 left lung (computed once: report and viewer use it)."""
        return LungMasks(self.lung_left, self.lung_right, self.volume.spacing_mm).labels()

    def to_dict(self) -> dict[str, Any]:
        volume = self.volume
        identification = self.identification.to_dict() if self.identification is not None else None
        return {
            "software": {"name": "ctriage", "version": __version__},
            "models": self.models,
            "study": volume.meta.to_dict(),
            "input": {
                "shape_zyx": list(volume.shape),
                "spacing_mm_zyx": [round(float(s), 4) for s in volume.spacing_mm],
                "slices": int(volume.shape[0]),
                "orientation": "z head->feet, y anterior->posterior, x patient right->left",
            },
            "lesion_source": self.lesion_source,
            "warnings": self.warnings,
            "severity": self.severity.to_dict(),
            "identification": identification,
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


def lesions_in_lungs(
    lungs: LungMasks, labels: np.ndarray, hu: np.ndarray, spacing_mm: tuple[float, float, float], denoise: bool
) -> tuple[LungMasks, np.ndarray, float]:
    """Give lesion voxels in the dense-lung region next to the lungs to the lungs (:func:`add_dense_lung`),
    drop those elsewhere outside the lungs, and with ``denoise`` drop lesions under ``MIN_LESION_ML`` and a
    study's findings under ``MIN_STUDY_LESION_ML`` in total. Returns the lungs, the labels and the mL dismissed
    as a study's minor findings."""
    # a model's output is screened for chest-wall slivers; a given (reference) mask is taken as it is
    lungs = add_dense_lung(lungs, labels, hu, min_thickness_mm=DENSE_LUNG_MIN_THICKNESS_MM if denoise else 0.0)
    labels = labels * lungs.combined
    if not denoise:
        return lungs, labels, 0.0
    from ctriage.lesions import dismiss_minor_findings, remove_small_lesions

    return lungs, *dismiss_minor_findings(remove_small_lesions(labels, spacing_mm), spacing_mm)


def lesion_search_area(lungs: LungMasks, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Where the lesion model looks: on each slice with lung, the lungs' bounding rectangle grown by the
    dense-lung margin (dense lung along the chest wall lies outside the aerated lung)."""
    area = np.zeros(lungs.left.shape, bool)
    lung = lungs.combined
    margin = [int(np.ceil(HULL_MARGIN_MM / s)) for s in spacing_mm[1:]]
    for k in np.flatnonzero(lung.any(axis=(1, 2))):
        rows, cols = np.flatnonzero(lung[k].any(axis=1)), np.flatnonzero(lung[k].any(axis=0))
        area[
            k,
            max(rows[0] - margin[0], 0) : rows[-1] + 1 + margin[0],
            max(cols[0] - margin[1], 0) : cols[-1] + 1 + margin[1],
        ] = True
    return area


@contextmanager
def _timed(timings: dict[str, float], stage: str, progress: Progress | None) -> Iterator[None]:
    if progress is not None:
        progress(stage)
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def grid_spacing_mm(spacing_mm: tuple[float, float, float], grid: slice) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm of the slices ``grid`` of a volume with voxel size ``spacing_mm``."""
    return (spacing_mm[0] * grid.step, spacing_mm[1], spacing_mm[2])


def analysis_slices(spacing_mm: tuple[float, float, float]) -> slice:
    """The slices the model analyses: all slices down to 1.34 mm spacing; of a thinner series, one slice in k
    for a grid of about 2 mm (k = ``work_grid_z_factor``), the middle one of each group of k."""
    k = work_grid_z_factor(spacing_mm)
    return slice(k // 2, None, k)


def analyze_volume(
    volume: CTVolume,
    lesion_labels: np.ndarray | None = None,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
) -> StudyResult:
    """Analyse a loaded CT. ``lesion_labels`` (0 bg, 1 GGO, 2 consolidation) replaces the lesion model.

    With the lesion model, a thin-slice series is analysed on :func:`analysis_slices` and each slice takes the
    lung and lesion masks of its nearest analysed slice; a given lesion mask is used on every slice.
    """
    timings = {} if timings is None else timings
    models: dict[str, str] = {}
    from_model = lesion_labels is None
    grid = analysis_slices(volume.spacing_mm) if from_model else slice(0, None, 1)
    k, hu, spacing_mm = grid.step, volume.hu_at(grid), grid_spacing_mm(volume.spacing_mm, grid)
    with _timed(timings, "lungs", progress):
        lungs = segment_lungs(hu, spacing_mm)
    slice_probability = None
    with _timed(timings, "lesions", progress):
        if from_model:
            from ctriage.lesions import segment_lesions

            lesions = segment_lesions(hu, lesion_search_area(lungs, spacing_mm), spacing_mm)
            lesion_labels, slice_probability = lesions.mask, lesions.slice_probability
            models["lesions"] = lesions.model_version
        lungs, lesion_labels, dismissed_ml = lesions_in_lungs(lungs, lesion_labels, hu, spacing_mm, from_model)
        source = f"model {models['lesions']}" if from_model else "given mask"
    with _timed(timings, "identification", progress):
        from ctriage.identify import identify

        identification = identify(
            lesion_labels, lungs.left, lungs.right, spacing_mm, slice_probability=slice_probability
        )
        models["identification"] = identification.model_version
    with _timed(timings, "severity", progress):
        if k > 1:  # back onto every slice
            lungs = LungMasks(*(upsample(m, 1, volume.shape, k) for m in (lungs.left, lungs.right)), volume.spacing_mm)
            lesion_labels = upsample(lesion_labels, 1, volume.shape, k)
        severity = quantify(lungs.left, lungs.right, lesion_labels, volume.spacing_mm)
    warnings = list(volume.warnings)  # what the loader found that limits this input
    if dismissed_ml:
        from ctriage.lesions import MIN_STUDY_LESION_ML

        warnings.append(
            f"{dismissed_ml:.1f} mL of lesion findings in all, under the {MIN_STUDY_LESION_ML:g} mL a study needs "
            "to count as a finding (the lesion model's noise on normal chests): read as no lesion (CT-0)"
        )
    if severity.lung_ml < MIN_PLAUSIBLE_LUNG_ML:
        warnings.append(
            f"only {severity.lung_ml:.0f} mL of lung found: not a chest CT, or the lungs are only partly in the "
            "field of view; severity and identification are not meaningful"
        )
    return StudyResult(
        warnings=warnings,
        volume=volume,
        lung_left=lungs.left,
        lung_right=lungs.right,
        lesion_mask=lesion_labels,
        severity=severity,
        identification=identification,
        lesion_source=source,
        analysed_slices=grid,
        models=models,
        timings_s=timings,
    )


def analyze_study(
    source: StudySource, lesion_mask: Path | None = None, progress: Progress | None = None
) -> StudyResult:
    """Load and analyse one study found by :func:`ctriage.io.find_studies`."""
    timings: dict[str, float] = {}
    with _timed(timings, "load", progress):  # the slices the model does not see are decoded when first read
        volume = load_study(source, first=analysis_slices if lesion_mask is None else None)
    labels = mask_to_canonical(Path(lesion_mask), volume.shape) if lesion_mask is not None else None
    return analyze_volume(volume, labels, progress=progress, timings=timings)


def analyze_path(path: Path, lesion_mask: Path | None = None, progress: Progress | None = None) -> StudyResult:
    """Analyse the single study at ``path`` (DICOM series folder, DICOM file or NIfTI)."""
    studies = find_studies(path)
    if len(studies) > 1:
        from ctriage.io import InputError

        raise InputError(f"{path}: holds {len(studies)} studies; analyse them one by one")
    return analyze_study(studies[0], lesion_mask=lesion_mask, progress=progress)
