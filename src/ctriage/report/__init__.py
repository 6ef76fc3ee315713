"""Study outputs: report.json, NIfTI masks, overlay PNGs, severity projection (DICOM SEG/SR in dicom_out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ctriage.io.nifti import save_nifti
from ctriage.report.images import most_affected_slices, render_slice, severity_projection

if TYPE_CHECKING:
    from ctriage.pipeline import StudyResult


def write_outputs(result: StudyResult, outdir: Path) -> dict[str, Path]:
    """Write report.json, lungs.nii.gz (1 right, 2 left), lesions.nii.gz (1 GGO, 2 consolidation),
    overlay_<slice>.png for the most affected slices and projection.png into ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    volume = result.volume
    paths = _write_images(result, outdir)
    paths["lungs"] = save_nifti(result.lung_labels, volume.affine, outdir / "lungs.nii.gz")
    paths["lesions"] = save_nifti(result.lesion_mask, volume.affine, outdir / "lesions.nii.gz")
    report = result.to_dict()
    report["files"] = {
        "lungs": "lungs.nii.gz",
        "lesions": "lesions.nii.gz",
        "overlays": [path.name for name, path in paths.items() if name.startswith("overlay_")],
        "projection": "projection.png",
    }
    paths["report"] = outdir / "report.json"
    paths["report"].write_text(json.dumps(report, indent=2, default=float))
    return paths


def _write_images(result: StudyResult, outdir: Path) -> dict[str, Path]:
    """Overlay PNGs of the most affected slices and the severity projection; returns their paths by name."""
    volume = result.volume
    paths: dict[str, Path] = {}
    lung_labels = result.lung_labels
    for k in most_affected_slices(result.lesion_mask):
        image = render_slice(volume.hu_at(k), result.lesion_mask[k], lung2d=lung_labels[k] > 0)
        path = outdir / f"overlay_{k:04d}.png"
        image.save(path, compress_level=1)  # fast; PNG is lossless at every level
        paths[f"overlay_{k:04d}"] = path
    grid = result.analysed_slices  # the masks repeat between analysed slices: their HU is enough
    projection = severity_projection(volume.hu_at(grid), lung_labels[grid] > 0, result.lesion_mask[grid],
                                     result.analysed_spacing_mm)
    paths["projection"] = outdir / "projection.png"
    projection.save(paths["projection"], compress_level=1)
    return paths
