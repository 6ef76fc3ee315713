"""The result of one study's analysis, in typed parts: what the pipeline hands to the report, the DICOM writers,
the viewer and the service. ``StudyResult.to_dict`` is the content of report.json (the JSON edge)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ctriage import __version__

if TYPE_CHECKING:
    from ctriage.identify import Identification
    from ctriage.io import CTVolume
    from ctriage.lungs import LungMasks
    from ctriage.severity import Severity


@dataclass(frozen=True)
class Lesions:
    """The lesion mask, uint8 (z, y, x) of :class:`ctriage.labels.LesionLabel` values, inside the lungs only, and
    where it came from: ``source`` is "model <version>" or "given mask"."""

    mask: np.ndarray
    source: str


@dataclass(frozen=True)
class Completeness:
    """Whether the analysed series is complete (checked by the service): ``reasons`` why it is not."""

    reasons: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "reasons": list(self.reasons)}


def grid_spacing_mm(spacing_mm: tuple[float, float, float], grid: slice) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm of the slices ``grid`` of a volume with voxel size ``spacing_mm``."""
    return (spacing_mm[0] * grid.step, spacing_mm[1], spacing_mm[2])


@dataclass
class StudyResult:
    """Everything ctriage knows about one study: the CT, lungs and lesions on its voxel grid, severity, COVID-19
    identification (with its ``reliable`` flag), the severity projection, and what limits them (``warnings``)."""

    volume: CTVolume
    lungs: LungMasks
    lesions: Lesions
    severity: Severity
    identification: Identification | None = None
    analysed_slices: slice = field(default_factory=lambda: slice(0, None, 1))  # z slices the models saw
    models: dict[str, str] = field(default_factory=dict)  # model name -> version
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    completeness: Completeness | None = None  # None: not checked (the service checks it)

    @property
    def analysed_spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm of the analysed slices (``analysed_slices``)."""
        return grid_spacing_mm(self.volume.spacing_mm, self.analysed_slices)

    @cached_property
    def projection(self) -> np.ndarray:
        """The X-ray-like severity projection, RGB uint8 (rows, cols, 3), computed once (projection.png, the DICOM
        secondary capture); see :func:`ctriage.report.images.severity_projection`."""
        from ctriage.report.images import severity_projection

        grid = self.analysed_slices  # the masks repeat between analysed slices: their HU is enough
        image = severity_projection(self.volume.hu_at(grid), self.lungs.labels[grid] > 0, self.lesions.mask[grid],
                                    self.analysed_spacing_mm)
        return np.asarray(image)  # an RGB image: no conversion (a copy) needed

    def set_completeness(self, reasons: list[str]) -> None:
        """Record the completeness check; an incomplete series' identification is marked not reliable."""
        self.completeness = Completeness(tuple(reasons))
        if reasons and self.identification is not None:
            self.identification = replace(self.identification, reliable=False)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (report.json without its "files")."""
        volume = self.volume
        identification = self.identification.to_dict() if self.identification is not None else None
        out = {
            "software": {"name": "ctriage", "version": __version__},
            "models": self.models,
            "study": volume.meta.to_dict(),
            "input": {
                "shape_zyx": list(volume.shape),
                "spacing_mm_zyx": [round(float(s), 4) for s in volume.spacing_mm],
                "slices": int(volume.shape[0]),
                "orientation": "z head->feet, y anterior->posterior, x patient right->left",
            },
            "lesion_source": self.lesions.source,
            "warnings": self.warnings,
            "severity": self.severity.to_dict(),
            "identification": identification,
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }
        if self.completeness is not None:
            out["completeness"] = self.completeness.to_dict()
        return out
