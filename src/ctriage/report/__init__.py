"""Study outputs: report.json, NIfTI masks, overlay PNGs, severity projection (DICOM SEG/SR in dicom_out)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ctriage.io.errors import OutputError
from ctriage.io.nifti import save_nifti
from ctriage.report.images import most_affected_slices, render_slice

if TYPE_CHECKING:
    from ctriage.result import StudyResult


MIN_FREE_MIB = 64  # a study's outputs: masks (1-10 MB gzipped) and pictures (about 1 MB), with a margin
REPORT = "report.json"


def prepare_outdir(outdir: Path, min_free_mib: float = MIN_FREE_MIB) -> None:
    """Before an analysis: create ``outdir``, prove that a file can be written there, require ``min_free_mib`` MiB
    free on its disk, and remove the outputs of an earlier run (:func:`clear_outputs`), so that a run that fails
    leaves no earlier report looking current. Raises :class:`OutputError` with the reason."""
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir) as probe:
            probe.write(b"ctriage")
        free = shutil.disk_usage(outdir).free
    except OSError as exc:
        raise OutputError(f"{outdir}: cannot write the outputs there ({exc.strerror or exc})") from exc
    if free < min_free_mib * 2**20:
        raise OutputError(
            f"{outdir}: only {free / 2**20:.0f} MiB free on its disk; a study's outputs need {min_free_mib:.0f} MiB"
        )
    clear_outputs(outdir)


def clear_outputs(outdir: Path) -> None:
    """Remove report.json from ``outdir`` and then the files it names (masks, pictures): the outputs of an earlier
    run, and nothing else. Raises :class:`OutputError` when they cannot be removed."""
    report = Path(outdir) / REPORT
    try:
        files = json.loads(report.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):  # none, unreadable, or not a report of ours
        files = {}
    names = [n for value in files.values() for n in (value if isinstance(value, list) else [value])]
    try:
        report.unlink(missing_ok=True)  # first: an interrupted clean-up leaves no report
        for name in names:
            if isinstance(name, str) and name == Path(name).name and not name.startswith("."):
                (Path(outdir) / name).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"{outdir}: cannot remove the outputs of an earlier run ({exc.strerror or exc})") from exc


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same suffixes) to write to; renamed onto ``path`` when the
    block ends without error (``os.replace``: readers see the old file or the whole new one, never a part), removed
    otherwise. An OSError (disk full, folder removed) becomes :class:`OutputError`."""
    path = Path(path)
    temporary = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from exc
    finally:
        temporary.unlink(missing_ok=True)


def write_outputs(result: StudyResult, outdir: Path | str) -> dict[str, Path]:
    """Write report.json, lungs.nii.gz (1 right, 2 left), lesions.nii.gz (1 GGO, 2 consolidation),
    overlay_<slice>.png for the most affected slices and projection.png into ``outdir``.

    The outputs of an earlier run there are removed first; each file is written to a temporary name and renamed,
    and report.json comes last, so that it exists only when every file it names is complete."""
    outdir = Path(outdir)
    prepare_outdir(outdir, min_free_mib=0)  # the free space was checked before the analysis, where it matters
    volume = result.volume
    paths = _write_images(result, outdir)
    for name, mask in (("lungs", result.lungs.labels), ("lesions", result.lesions.mask)):
        paths[name] = outdir / f"{name}.nii.gz"
        with atomic_path(paths[name]) as temporary:
            save_nifti(mask, volume.affine, temporary)
    report = result.to_dict()
    report["files"] = {
        "lungs": "lungs.nii.gz",
        "lesions": "lesions.nii.gz",
        "overlays": [path.name for name, path in paths.items() if name.startswith("overlay_")],
        "projection": "projection.png",
    }
    paths["report"] = outdir / REPORT
    with atomic_path(paths["report"]) as temporary:
        temporary.write_text(json.dumps(report, indent=2, default=float))
    return paths


def _write_images(result: StudyResult, outdir: Path) -> dict[str, Path]:
    """Overlay PNGs of the most affected slices and the severity projection; returns their paths by name."""
    volume, lesion_mask = result.volume, result.lesions.mask
    paths: dict[str, Path] = {}
    for k in most_affected_slices(lesion_mask):
        image = render_slice(volume.hu_at(k), lesion_mask[k], lung2d=result.lungs.labels[k] > 0)
        path = outdir / f"overlay_{k:04d}.png"
        with atomic_path(path) as temporary:
            image.save(temporary, compress_level=1)  # fast; PNG is lossless at every level
        paths[f"overlay_{k:04d}"] = path
    paths["projection"] = outdir / "projection.png"
    with atomic_path(paths["projection"]) as temporary:
        Image.fromarray(result.projection).save(temporary, compress_level=1)
    return paths
