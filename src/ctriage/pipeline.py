"""The analysis pipeline: CT volume -> lungs -> lesions -> identification -> severity, timed per stage, and the
Python API over it (:class:`Analyzer` loads the models once and analyses many studies; :func:`analyze` one)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ctriage.io import CTVolume, InputError, StudySource, find_studies, load_study
from ctriage.io.nifti import mask_to_canonical
from ctriage.lungs import DENSE_LUNG_MIN_THICKNESS_MM, HULL_MARGIN_MM, LungMasks, add_dense_lung, segment_lungs
from ctriage.preprocess import WorkGrid, grown_box
from ctriage.result import Lesions, StudyResult, grid_spacing_mm
from ctriage.severity import quantify

if TYPE_CHECKING:
    from ctriage.identify import IdentificationModel
    from ctriage.models.registry import ModelHandle

__all__ = ["STAGES", "Analyzer", "Models", "analysis_slices", "analyze", "analyze_path",
           "analyze_study", "analyze_volume", "lesion_search_area", "lesions_in_lungs"]

STAGES = ("load", "lungs", "lesions", "identification", "severity")  # what ``progress`` is told, in this order
Progress = Callable[[str], None]
MIN_PLAUSIBLE_LUNG_ML = 1000.0  # adult lungs hold several litres; far less means no (whole) chest in the scan


@dataclass(frozen=True)
class Models:
    """The models an analysis runs, loaded once: lesion segmentation and COVID-19 identification."""

    lesions: ModelHandle
    identification: IdentificationModel

    @classmethod
    def load(cls, folder: Path | str | None = None) -> Models:
        """The "lesions" and "identification" models, each from the first of ``folder`` (a models folder laid out
        as in :mod:`ctriage.models.registry`), ``$CTRIAGE_MODEL_DIR`` and the package's own that holds it."""
        from ctriage.identify import MODEL_NAME, IdentificationModel
        from ctriage.lesions import LESION_MODEL_NAME
        from ctriage.models.registry import load_model

        folder = None if folder is None else Path(folder)
        return cls(load_model(LESION_MODEL_NAME, folder), IdentificationModel(load_model(MODEL_NAME, folder)))


def lesions_in_lungs(
    lungs: LungMasks, labels: np.ndarray, hu: np.ndarray, denoise: bool
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

    return lungs, *dismiss_minor_findings(remove_small_lesions(labels, lungs.grid), lungs.grid)


def lesion_search_area(lungs: LungMasks) -> np.ndarray:
    """Where the lesion model looks: on each slice with lung, the lungs' bounding rectangle grown by the
    dense-lung margin (dense lung along the chest wall lies outside the aerated lung)."""
    area = np.zeros(lungs.left.shape, bool)
    lung = lungs.combined
    pixel_mm = (lungs.spacing_mm[1], lungs.spacing_mm[2])
    for k in np.flatnonzero(lung.any(axis=(1, 2))):
        area[k][grown_box(lung[k], HULL_MARGIN_MM, pixel_mm)] = True
    return area


@contextmanager
def _timed(timings: dict[str, float], stage: str, progress: Progress | None) -> Iterator[None]:
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not declared in STAGES")
    if progress is not None:
        progress(stage)
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def analysis_slices(spacing_mm: tuple[float, float, float]) -> slice:
    """The slices the model analyses: all slices down to 1.34 mm spacing; of a thinner series, one slice in k
    for a grid of about 2 mm (k = the working grid's ``z_factor``), the middle one of each group of k."""
    return WorkGrid.of(spacing_mm).slices


def analyze_volume(
    volume: CTVolume,
    lesion_labels: np.ndarray | None = None,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
    models: Models | None = None,
) -> StudyResult:
    """Analyse a loaded CT. ``lesion_labels`` (:class:`ctriage.labels.LesionLabel` values) replaces the lesion
    model; ``models`` default to the registry's.

    With the lesion model, a thin-slice series is analysed on :func:`analysis_slices` and each slice takes the
    lung and lesion masks of its nearest analysed slice; a given lesion mask is used on every slice.
    """
    timings = {} if timings is None else timings
    versions: dict[str, str] = {}
    from_model = lesion_labels is None
    volume_grid = WorkGrid.of(volume.spacing_mm)
    analysed = volume_grid.slices if from_model else slice(0, None, 1)
    hu, grid = volume.hu_at(analysed), WorkGrid.of(grid_spacing_mm(volume.spacing_mm, analysed))
    with _timed(timings, "lungs", progress):
        lungs = segment_lungs(hu, grid)
    slice_probability = None
    with _timed(timings, "lesions", progress):
        if from_model:
            from ctriage.lesions import segment_lesions

            found = segment_lesions(hu, lesion_search_area(lungs), grid.spacing_mm,
                                    model=models.lesions if models else None)
            lesion_labels, slice_probability = found.mask, found.slice_probability
            versions["lesions"] = found.model_version
        lungs, lesion_labels, dismissed_ml = lesions_in_lungs(lungs, lesion_labels, hu, from_model)
        source = f"model {versions['lesions']}" if from_model else "given mask"
    with _timed(timings, "identification", progress):
        from ctriage.identify import identify

        identification = identify(lesion_labels, lungs.left, lungs.right, grid.spacing_mm,
                                  slice_probability=slice_probability, model=models.identification if models else None)
        versions["identification"] = identification.model_version
    with _timed(timings, "severity", progress):
        if analysed.step > 1:  # back onto every slice
            back = (volume_grid.upsample_slices(m, volume.shape) for m in (lungs.left, lungs.right))
            lungs = LungMasks(*back, volume_grid)
            lesion_labels = volume_grid.upsample_slices(lesion_labels, volume.shape)
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
        identification = replace(identification, reliable=False)
    return StudyResult(
        volume=volume,
        lungs=lungs,
        lesions=Lesions(lesion_labels, source),
        severity=severity,
        identification=identification,
        analysed_slices=analysed,
        models=versions,
        warnings=warnings,
        timings_s=timings,
    )


def analyze_study(
    source: StudySource, lesion_mask: Path | None = None, progress: Progress | None = None,
    models: Models | None = None,
) -> StudyResult:
    """Load and analyse one study found by :func:`ctriage.io.find_studies`."""
    timings: dict[str, float] = {}
    with _timed(timings, "load", progress):  # the slices the model does not see are decoded when first read
        volume = load_study(source, first=analysis_slices if lesion_mask is None else None)
    labels = mask_to_canonical(Path(lesion_mask), volume.shape) if lesion_mask is not None else None
    return analyze_volume(volume, labels, progress=progress, timings=timings, models=models)


def analyze_path(
    path: Path | str, lesion_mask: Path | None = None, progress: Progress | None = None, models: Models | None = None
) -> StudyResult:
    """Analyse the single study at ``path`` (DICOM series folder, DICOM file or NIfTI)."""
    studies = find_studies(path)
    if len(studies) > 1:
        raise InputError(f"{path}: holds {len(studies)} studies; analyse them one by one")
    return analyze_study(studies[0], lesion_mask=lesion_mask, progress=progress, models=models)


class Analyzer:
    """Analyses chest CT studies with models loaded once, for programs that analyse many (a notebook, a hospital's
    pipeline, a viewer extension)::

        analyzer = Analyzer()                      # or Analyzer("/site/models"), Analyzer(Models.load(...))
        for folder in folders:
            result = analyzer.analyze(folder)      # StudyResult
            write_outputs(result, out / folder.name)

    ``models``: a :class:`Models`, a models folder searched first (see :meth:`Models.load`), or None for the
    installed models.
    """

    def __init__(self, models: Models | Path | str | None = None) -> None:
        self.models = models if isinstance(models, Models) else Models.load(models)

    def analyze(
        self,
        source: Path | str | StudySource | CTVolume,
        *,
        lesion_mask: Path | str | None = None,
        progress: Progress | None = None,
    ) -> StudyResult:
        """Analyse one study: a DICOM series folder, DICOM file or NIfTI file (``Path`` or ``str``), a study from
        :func:`ctriage.io.find_studies`, or a volume from :func:`ctriage.load_volume`. ``lesion_mask`` (NIfTI,
        :class:`ctriage.labels.LesionLabel` values) replaces the lesion model; ``progress`` is called with each
        stage's name (``STAGES``) as it starts. Bad input raises an :class:`ctriage.InputError`."""
        mask = None if lesion_mask is None else Path(lesion_mask)
        if isinstance(source, CTVolume):
            labels = None if mask is None else mask_to_canonical(mask, source.shape)
            return analyze_volume(source, labels, progress=progress, models=self.models)
        if isinstance(source, StudySource):
            return analyze_study(source, lesion_mask=mask, progress=progress, models=self.models)
        return analyze_path(Path(source), lesion_mask=mask, progress=progress, models=self.models)


def analyze(
    source: Path | str | StudySource | CTVolume, *, models: Models | Path | str | None = None,
    lesion_mask: Path | str | None = None, progress: Progress | None = None,
) -> StudyResult:
    """Analyse one study (see :meth:`Analyzer.analyze`, also for ``lesion_mask``) with ``models`` (see
    :class:`Analyzer`)."""
    return Analyzer(models).analyze(source, lesion_mask=lesion_mask, progress=progress)
