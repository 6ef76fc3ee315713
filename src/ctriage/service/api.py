"""REST API and web UI (FastAPI), served by the same process as the listener and the workers."""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pydicom
from fastapi import FastAPI, File, Header, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from pydicom.errors import InvalidDicomError
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from ctriage import triage
from ctriage.service.db import DONE, INCOMPLETE, STATUSES, Review, Study, as_utc, requeue
from ctriage.service.pacs import DicomNetworkError
from ctriage.service.render import WINDOWS_HU, slice_png
from ctriage.service.runtime import Service

WEB_DIR = Path(__file__).parent / "web"
_SAFE_FILE = re.compile(r"^[\w.-]+\.(png|json|nii\.gz|dcm)$")


class ReviewIn(BaseModel):
    """A radiologist's decision on a result."""

    decision: Literal["confirmed", "rejected"]
    comment: str = Field(default="", max_length=4000)
    user: str = Field(default="", max_length=128)


@lru_cache(maxsize=8)
def _viewer_arrays(result_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memory-mapped HU, lesion and lung arrays of one result (cached: slices are fetched in quick bursts)."""
    folder = Path(result_dir)
    return tuple(np.load(folder / name, mmap_mode="r") for name in ("hu.npy", "lesion.npy", "lungs.npy"))  # type: ignore[return-value]


def _ranked(studies: list[Study], policy: str) -> list[Study]:
    """Worklist order under a triage policy; studies without a result go last, by arrival."""

    def key(study: Study) -> tuple:
        item = triage.TriageItem.from_report(
            study.report or {}, name=str(study.id), fallback_arrival=as_utc(study.received_at)
        )
        return (study.report is None, triage.sort_key(item, policy))

    return sorted(studies, key=key)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over a (started or not) :class:`Service`."""
    app = FastAPI(title="ctriage", version="1")
    sessions = service.sessions

    def load(study_id: int) -> Study:
        with sessions() as session:
            study = session.get(
                Study, study_id, options=[selectinload(Study.reviews), selectinload(Study.analyses)]
            )
        if study is None:
            raise HTTPException(404, f"no study {study_id}")
        return study

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness, and the DICOM / policy settings the UI shows."""
        config = service.config
        return {
            "status": "ok",
            "ae_title": config.ae_title,
            "dicom_port": config.dicom_port,
            "policy": config.triage_policy,
            "policies": list(triage.POLICIES),
            "windows": list(WINDOWS_HU),
            "destination": str(config.destination) if config.destination else None,
        }

    @app.get("/api/studies")
    def list_studies(
        status: Annotated[list[str] | None, Query()] = None,
        policy: str | None = None,
        positive: bool | None = None,
        min_category: Annotated[int | None, Query(ge=0, le=4)] = None,
        q: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        """The worklist: filtered, ordered by the site's triage policy (or ``policy``), first ``limit`` rows."""
        policy = policy or service.config.triage_policy
        if policy not in triage.POLICIES:
            raise HTTPException(422, f"unknown policy {policy!r}; one of {', '.join(triage.POLICIES)}")
        query = select(Study).options(selectinload(Study.reviews))
        if status:
            bad = set(status) - set(STATUSES)
            if bad:
                raise HTTPException(422, f"unknown status {', '.join(sorted(bad))}")
            query = query.where(Study.status.in_(status))
        if min_category is not None:
            query = query.where(Study.ct_category >= min_category)
        if q:
            pattern = f"%{q}%"
            query = query.where(
                or_(
                    Study.patient_id.ilike(pattern),
                    Study.patient_name.ilike(pattern),
                    Study.accession_number.ilike(pattern),
                    Study.study_uid.ilike(pattern),
                )
            )
        with sessions() as session:
            studies = list(session.scalars(query))
        if positive is not None:
            studies = [
                s
                for s in studies
                if s.report and bool((s.report.get("identification") or {}).get("positive")) == positive
            ]
        return [s.summary() for s in _ranked(studies, policy)[:limit]]

    @app.get("/api/studies/{study_id}")
    def get_study(study_id: int) -> dict[str, Any]:
        """One study: worklist row, full report, all reviews and what the viewer needs."""
        study = load(study_id)
        n_slices = 0
        if study.status in (DONE, INCOMPLETE) and study.result_dir and (Path(study.result_dir) / "hu.npy").exists():
            n_slices = int(_viewer_arrays(study.result_dir)[0].shape[0])
        folder = Path(study.result_dir) if study.result_dir else None
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else []
        return {
            **study.summary(),
            "report": study.report,
            "reviews": [r.to_dict() for r in study.reviews],
            "analyses": [a.to_dict() for a in study.analyses],
            "expected_instances": study.expected_instances,
            "n_slices": n_slices,
            "files": files,
        }

    @app.get("/api/studies/{study_id}/slices/{index}.png")
    def get_slice(
        study_id: int, index: int, window: str = "lung", overlay: bool = True, lungs: bool = False
    ) -> Response:
        """One axial slice (canonical z index, head to feet) as PNG, with the lesion overlay on or off."""
        study = load(study_id)
        if window not in WINDOWS_HU:
            raise HTTPException(422, f"unknown window {window!r}; one of {', '.join(WINDOWS_HU)}")
        if not study.result_dir or not (Path(study.result_dir) / "hu.npy").exists():
            raise HTTPException(409, "the study has no analysis result yet")
        hu, lesion, lung_labels = _viewer_arrays(study.result_dir)
        if not 0 <= index < hu.shape[0]:
            raise HTTPException(404, f"slice {index} outside 0..{hu.shape[0] - 1}")
        png = slice_png(
            np.asarray(hu[index]),
            np.asarray(lesion[index]),
            window,
            overlay,
            np.asarray(lung_labels[index]) if lungs else None,
        )
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/studies/{study_id}/files/{name}")
    def get_file(study_id: int, name: str) -> FileResponse:
        """A result file (projection.png, report.json, masks, DICOM outputs) by name."""
        study = load(study_id)
        path = Path(study.result_dir) / name if study.result_dir else None
        if not _SAFE_FILE.match(name) or path is None or not path.is_file():
            raise HTTPException(404, f"no file {name!r} for study {study_id}")
        return FileResponse(path)

    @app.post("/api/studies/{study_id}/retry")
    def retry(study_id: int) -> dict[str, Any]:
        """Queue a failed (or finished) study for analysis again."""
        load(study_id)
        if not requeue(sessions, study_id):
            raise HTTPException(409, "only failed or finished studies can be retried")
        return load(study_id).summary()

    @app.post("/api/studies/{study_id}/send")
    def send(study_id: int) -> dict[str, str]:
        """Send the study's SEG / SR / SC to the configured destination again."""
        load(study_id)
        return {"send_status": service.worker.send_results(study_id)}

    @app.post("/api/studies/{study_id}/review")
    def review(
        study_id: int, body: ReviewIn, x_remote_user: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Confirm or reject a result with a comment; user: the proxy's X-Remote-User, else the form's."""
        study = load(study_id)
        if study.status != DONE:
            raise HTTPException(409, "only analysed studies can be reviewed")
        user = (x_remote_user or body.user).strip()
        if not user:
            raise HTTPException(422, "a user name is required")
        with sessions.begin() as session:
            row = Review(study_id=study_id, decision=body.decision, comment=body.comment, user=user)
            session.add(row)
            session.flush()
            return row.to_dict()

    @app.post("/api/pull")
    def pull_now() -> dict[str, Any]:
        """Query the configured PACS for new CT studies now and retrieve them."""
        if service.config.pacs is None:
            raise HTTPException(409, "no PACS configured")
        try:
            return {"retrieved": service.pull()}
        except DicomNetworkError as exc:
            raise HTTPException(502, str(exc)) from exc

    @app.post("/api/upload")
    async def upload(files: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
        """Upload a study (the DICOM files of a folder, or a NIfTI file); queued at once, no quiet period."""
        studies: set[str] = set()
        nifti_ids: list[int] = []
        ignored: list[str] = []
        for upload_file in files:
            data = await upload_file.read()
            name = upload_file.filename or "upload"
            if name.lower().endswith((".nii", ".nii.gz")):
                nifti_ids.append(service.store.add_nifti(data, name).id)
                continue
            try:
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                service.store.add_instance(data, header, "HTTP", "upload")
                studies.add(str(header.StudyInstanceUID))
            except (InvalidDicomError, ValueError, AttributeError, EOFError):
                ignored.append(name)
        for study_uid in studies:
            service.store.queue_now(study_uid)
        with sessions() as session:
            ids = (
                list(session.scalars(select(Study.id).where(Study.study_uid.in_(studies)))) if studies else []
            )
        if not ids and not nifti_ids:
            raise HTTPException(422, "no DICOM or NIfTI file in the upload")
        return {"study_ids": sorted(ids + nifti_ids), "ignored": ignored}

    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app
