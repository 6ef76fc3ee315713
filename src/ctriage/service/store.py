"""Received instances on disk, one folder per study, and the study rows that track them.

An instance is written (and fsync'ed) before its study row is updated, and both happen before the C-STORE is
acknowledged, so a study the sender saw as stored survives a crash. Nothing here ever deletes a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ctriage.service.db import FINISHED, QUEUED, RECEIVING, Study, utcnow

ANALYSED_MODALITIES = ("CT",)
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def safe_name(uid: str) -> str:
    """A file-system-safe name for a DICOM UID (UIDs are digits and dots; anything else is hashed)."""
    uid = uid.strip().rstrip("\x00")
    return uid if _UID.match(uid) else "x" + hashlib.sha1(uid.encode()).hexdigest()


def write_durably(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temporary file, fsync'ed and moved into place; returns whether the file
    is new. Linking the temporary file into place fails if ``path`` exists, so of two processes storing the same
    instance at once (two front ends, one shared folder) exactly one sees it as new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        os.replace(tmp, path)
        return False
    except OSError:  # a file system without hard links: new unless it exists (exact for one process only)
        is_new = not path.exists()
        os.replace(tmp, path)
        return is_new
    os.unlink(tmp)
    return True


class StudyStore:
    """Files of received studies under ``studies_dir`` and their rows in the job database."""

    def __init__(
        self, studies_dir: Path, sessions: sessionmaker[Session], site_of: Callable[[str], str] = str
    ) -> None:
        self.studies_dir = Path(studies_dir)
        self.sessions = sessions
        self.site_of = site_of  # calling AE title -> site of the studies it sends
        self._lock = threading.Lock()  # two associations may start the same new study at once

    def add_instance(self, data: bytes, header: pydicom.Dataset, calling_ae: str, source: str) -> Path:
        """Store one encoded DICOM file (``data``, with ``header`` its parsed dataset); returns its path."""
        study_uid = str(getattr(header, "StudyInstanceUID", "") or "")
        if not study_uid:
            raise ValueError("instance without StudyInstanceUID")
        folder = self.studies_dir / safe_name(study_uid)
        path = (
            folder
            / safe_name(str(header.get("SeriesInstanceUID", "") or "unknown"))
            / (safe_name(str(header.get("SOPInstanceUID", "") or uuid.uuid4().hex)) + ".dcm")
        )
        is_new = write_durably(path, data)
        try:
            self._record(study_uid, folder, header, calling_ae, source, is_new)
        except IntegrityError:  # another front end created the study's row at the same moment: update that one
            self._record(study_uid, folder, header, calling_ae, source, is_new)
        return path

    def _record(
        self,
        study_uid: str,
        folder: Path,
        header: pydicom.Dataset,
        calling_ae: str,
        source: str,
        is_new: bool,
    ) -> None:
        """Create or update the study row for a stored instance; new CT instances restart the quiet period. The row
        is locked (PostgreSQL) so that front ends storing instances of one study at once count all of them."""
        with self._lock, self.sessions.begin() as session:
            study = session.scalars(select(Study).where(Study.study_uid == study_uid).with_for_update()).first()
            created = study is None
            if study is None:
                study = Study(
                    study_uid=study_uid,
                    source=source,
                    calling_ae=calling_ae,
                    site=self.site_of(calling_ae),
                    path=str(folder),
                    **header_fields(header),
                )
                session.add(study)
            if not is_new:
                return
            study.n_instances = (study.n_instances or 0) + 1
            if not created and str(header.get("Modality", "")).upper() not in ANALYSED_MODALITIES:
                return  # e.g. our own SEG / SR routed back by the PACS: kept, but no new analysis
            study.last_instance_at = utcnow()
            if study.status in (*FINISHED, QUEUED):
                study.status = RECEIVING

    def add_nifti(self, data: bytes, filename: str, calling_ae: str = "HTTP") -> Study:
        """Store an uploaded NIfTI file as its own study, queued at once."""
        key = uuid.uuid4().hex
        suffix = ".nii.gz" if filename.lower().endswith(".nii.gz") else ".nii"
        path = self.studies_dir / f"upload-{key}" / f"volume{suffix}"
        write_durably(path, data)
        with self.sessions.begin() as session:
            study = Study(
                study_uid=f"upload-{key}",
                source="upload",
                calling_ae=calling_ae,
                site=self.site_of(calling_ae),
                path=str(path),
                status=QUEUED,
                study_description=Path(filename).name,
                n_instances=1,
            )
            session.add(study)
        return study

    def held_instances(self, study_uid: str, series_uid: str) -> int:
        """How many instances of a series are on disk."""
        folder = self.studies_dir / safe_name(study_uid) / safe_name(series_uid)
        return sum(1 for _ in folder.glob("*.dcm")) if folder.is_dir() else 0

    def expect_instances(self, study_uid: str, counts: dict[str, int]) -> None:
        """Record how many instances each series should have (SeriesInstanceUID -> count, from the PACS)."""
        with self.sessions.begin() as session:
            study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
            if study is not None:
                study.expected_instances = {**(study.expected_instances or {}), **counts}

    def queue_now(self, study_uid: str, source: str | None = None) -> None:
        """Skip the quiet period of a study known to be complete (HTTP upload, finished C-MOVE / C-GET)."""
        with self.sessions.begin() as session:
            study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
            if study is None:
                return
            if source:
                study.source = source
            if study.status == RECEIVING:
                study.status = QUEUED


def age_text(age: str, birth_date: str = "", study_date: str = "") -> str:
    """A patient's age as shown on the worklist ("64 y", "6 mo", "12 d"): from the DICOM age string (``064Y``),
    else from the birth and study dates (YYYYMMDD); "" when neither is known."""
    match = re.fullmatch(r"0*(\d{1,3})([DWMY])", age.strip().upper())
    if match:
        number, unit = match.groups()
        return f"{int(number)} {dict(D='d', W='wk', M='mo', Y='y')[unit]}"
    try:
        born, seen = datetime.strptime(birth_date.strip(), "%Y%m%d"), datetime.strptime(study_date.strip(), "%Y%m%d")
    except ValueError:
        return ""
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{years} y" if years >= 0 else ""


def header_fields(ds: pydicom.Dataset) -> dict[str, str]:
    """Worklist columns taken from a DICOM header."""

    def value(keyword: str, limit: int) -> str:
        return str(ds.get(keyword, "") or "")[:limit]

    return {
        "patient_id": value("PatientID", 64),
        "patient_name": value("PatientName", 128),
        "patient_sex": {"M": "male", "F": "female", "O": "other"}.get(value("PatientSex", 16).strip().upper(), ""),
        "patient_age": age_text(value("PatientAge", 16), value("PatientBirthDate", 16), value("StudyDate", 16)),
        "accession_number": value("AccessionNumber", 64),
        "study_date": value("StudyDate", 16),
        "study_description": value("StudyDescription", 128),
        "series_description": value("SeriesDescription", 128),
    }
