"""Loading chest CT studies (DICOM series, multi-frame DICOM, NIfTI) as canonical HU volumes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ctriage.io.dicom import DicomHeader, FirstSlices, load_dicom_series, may_hold_image, read_header
from ctriage.io.errors import (
    CorruptFileError,
    EmptyInputError,
    IncompleteSeriesError,
    InputError,
    InputNotFoundError,
    NotCTError,
    NotVolumeError,
    UnsupportedTransferSyntaxError,
)
from ctriage.io.nifti import is_nifti, load_nifti
from ctriage.io.volume import CTVolume, StudyMeta

__all__ = [
    "CTVolume",
    "StudyMeta",
    "StudySource",
    "find_studies",
    "load_study",
    "load_volume",
    "InputError",
    "InputNotFoundError",
    "EmptyInputError",
    "CorruptFileError",
    "NotCTError",
    "IncompleteSeriesError",
    "NotVolumeError",
    "UnsupportedTransferSyntaxError",
]


@dataclass
class StudySource:
    """One study found on disk: a NIfTI file, or the DICOM files of one StudyInstanceUID."""

    label: str
    path: Path
    files: list[Path] = field(default_factory=list)
    kind: str = "dicom"
    headers: dict[Path, DicomHeader] = field(default_factory=dict, repr=False)  # read while grouping


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def find_studies(path: Path | str) -> list[StudySource]:
    """List the studies under ``path``: each NIfTI file is one, DICOM files are grouped by StudyInstanceUID."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if is_nifti(path):
            return [StudySource(label=path.name, path=path, files=[path], kind="nifti")]
        return [StudySource(label=path.name, path=path, files=[path], kind="dicom")]
    files = _files_under(path)
    if not files:
        raise EmptyInputError(f"{path}: the folder is empty")
    studies = [
        StudySource(label=str(f.relative_to(path)), path=f, files=[f], kind="nifti") for f in files if is_nifti(f)
    ]
    by_study: dict[str, list[Path]] = defaultdict(list)
    headers: dict[Path, DicomHeader] = {}
    unreadable: list[Path] = []
    for f in files:
        if is_nifti(f) or not may_hold_image(f):  # the loader ignores non-DICOM files too: no need to parse them
            continue
        try:
            header = read_header(f)
            study_uid = str(getattr(header.ds, "StudyInstanceUID", ""))
        except Exception:  # pydicom raises many exception types on damaged files
            study_uid = ""
        if study_uid:
            by_study[study_uid].append(f)
            headers[f] = header  # kept, so that loading does not parse the file's header again
        else:  # damaged DICOM: reported by the loader, within the study that shares its folder
            unreadable.append(f)
    study_of_folder = {f.parent: key for key, group in by_study.items() for f in group}
    for f in unreadable:
        by_study[study_of_folder.get(f.parent, str(f.parent))].append(f)
    for group in by_study.values():
        parents = {f.parent for f in group}
        common = (
            Path(*Path(group[0]).parts[: min(len(p.parts) for p in parents)]) if len(parents) > 1 else group[0].parent
        )
        label = str(common.relative_to(path)) if common != path else path.name
        studies.append(StudySource(label=label, path=common, files=group, kind="dicom",
                                   headers={f: headers[f] for f in group if f in headers}))
    if not studies:
        raise EmptyInputError(f"{path}: no DICOM or NIfTI files found")
    return studies


def load_study(source: StudySource, workers: int | None = None, first: FirstSlices | None = None) -> CTVolume:
    """Load one study found by :func:`find_studies`; with ``first``, a DICOM series decodes only those slices
    now (see :func:`ctriage.io.dicom.load_dicom_series`)."""
    if source.kind == "nifti":
        return load_nifti(source.path)
    return load_dicom_series(source.files, source.path, workers=workers, headers=source.headers, first=first)


def load_volume(path: Path | str, workers: int | None = None) -> CTVolume:
    """Load the single CT study at ``path`` (NIfTI file, DICOM file or series folder)."""
    studies = find_studies(path)
    if len(studies) > 1:
        raise InputError(f"{path}: holds {len(studies)} studies; load them one by one with find_studies()")
    return load_study(studies[0], workers=workers)
