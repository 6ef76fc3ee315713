"""REST API and web UI (FastAPI), served by the same process as the listener and the workers."""

from __future__ import annotations

import gzip
import hmac
import io
import json
import os
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import nibabel as nib
import numpy as np
import pydicom
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from pydicom.errors import InvalidDicomError
from sqlalchemy import or_, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from ctriage import triage
from ctriage.models.registry import find_model_files
from ctriage.report.images import LESION_RGB
from ctriage.service import audit, auth
from ctriage.service.db import DONE, INCOMPLETE, STATUSES, Review, Study, as_utc, requeue
from ctriage.service.metrics import QueueCollector
from ctriage.service.pacs import DicomNetworkError
from ctriage.service.queue import celery_app
from ctriage.service.render import WINDOWS_HU, slice_png
from ctriage.service.retention import delete_study
from ctriage.service.runtime import Service
from ctriage.service.viewer import open_viewer

WEB_DIR = Path(__file__).parent / "web"
_SAFE_FILE = re.compile(r"^[\w.-]+\.(png|json|nii\.gz|dcm)$")


PUBLIC_PATHS = frozenset(
    {"/login.html", "/login.js", "/common.js", "/style.css", "/api/login", "/api/health", "/api/ready", "/metrics"}
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
VIEW_AUDIT_INTERVAL_S = 600.0  # views of one study by one user closer together than this are one audit line


class ReviewIn(BaseModel):
    """A radiologist's decision on a result (the reviewer is the logged-in user)."""

    decision: Literal["confirmed", "rejected"]
    comment: str = Field(default="", max_length=4000)


class LoginIn(BaseModel):
    """User name and password of a login."""

    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


def _same_origin(request: Request) -> bool:
    """A browser's write from another site carries its Origin: refused whatever the cookies (CSRF)."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def user_of(request: Request) -> auth.SignedIn:
    """The signed-in user of a request (set by the session check of every non-public path)."""
    return request.state.user


def admin_of(request: Request) -> auth.SignedIn:
    """The signed-in user, who must be an admin (403 otherwise)."""
    user = user_of(request)
    if not user.is_admin:
        raise HTTPException(403, "this needs the admin role")
    return user


UserDep = Annotated[auth.SignedIn, Depends(user_of)]
AdminDep = Annotated[auth.SignedIn, Depends(admin_of)]


@lru_cache(maxsize=1)
def identification_card() -> dict[str, float] | None:
    """The identification model's operating point and its cross-validated sensitivity / specificity there (from
    its model card), for the study page's plain-words note; None when the card does not give them."""
    try:
        card = json.loads(find_model_files("identification")[1].read_text())
        validation = card["validation"]["cross_validation"]["all"]
        return {
            "threshold": float(card["operating_point"]["threshold"]),
            "sensitivity": float(validation["sensitivity"]),
            "specificity": float(validation["specificity"]),
        }
    except (OSError, KeyError, TypeError, ValueError):  # OSError: also the model not found
        return None


def _ranked(studies: list[Study], policy: str) -> list[Study]:
    """Worklist order under a triage policy; studies without a result go last, by arrival."""

    def key(study: Study) -> tuple:
        item = triage.TriageItem.from_report(
            study.report or {}, name=str(study.id), fallback_arrival=as_utc(study.received_at)
        )
        return (study.report is None, triage.sort_key(item, policy))

    return sorted(studies, key=key)


def readiness(service: Service) -> dict[str, str]:
    """"ok" or the problem, for the database, the data folder and (distributed mode) the broker."""
    checks: dict[str, str] = {}
    try:
        with service.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    writable = service.config.studies_dir.is_dir() and os.access(service.config.studies_dir, os.W_OK)
    checks["data_dir"] = "ok" if writable else f"{service.config.studies_dir} is not a writable folder"
    if service.config.distributed:
        try:
            with celery_app(service.config).connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:  # kombu raises the transport's own errors
            checks["broker"] = f"unavailable: {type(exc).__name__}"
    return checks


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over a (started or not) :class:`Service`."""
    app = FastAPI(title="ctriage", version="1")
    sessions = service.sessions
    config = service.config
    recent_views: dict[tuple[str, int], float] = {}  # (user, study id) -> monotonic time of the last audited view

    @app.middleware("http")
    async def require_session(request: Request, call_next: Any) -> Response:
        """Every path but the login page needs a session; every write needs the session's CSRF token."""
        path = request.url.path
        unsafe = request.method not in SAFE_METHODS
        if unsafe and not _same_origin(request):
            return JSONResponse({"detail": "cross-site request refused"}, 403)
        if path in PUBLIC_PATHS:
            return await call_next(request)
        user = await run_in_threadpool(auth.signed_in, sessions, request.cookies.get(auth.SESSION_COOKIE))
        if user is None:
            if path.startswith("/api/"):
                return JSONResponse({"detail": "not logged in"}, 401)
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login.html?next=" + quote(target, safe=""), 303)
        if unsafe and not hmac.compare_digest(request.headers.get(auth.CSRF_HEADER, ""), user.csrf_token):
            return JSONResponse({"detail": "missing or wrong CSRF token"}, 403)
        request.state.user = user
        return await call_next(request)

    def audit_event(request: Request, action: str, study: Study | None = None, detail: str = "") -> None:
        user = getattr(request.state, "user", None)
        audit.record(
            sessions,
            action,
            user=user.username if user else "",
            host=_client(request),
            study_id=study.id if study else None,
            study_uid=study.study_uid if study else "",
            detail=detail,
        )

    @app.post("/api/login")
    def login(body: LoginIn, request: Request, response: Response) -> dict[str, str]:
        """Check the user name and password and open a session (Secure, HttpOnly, SameSite=Strict cookie)."""
        token = auth.log_in(sessions, body.username, body.password, config.session_hours)
        if token is None:
            audit.record(sessions, "login-failed", user=body.username, host=_client(request))
            raise HTTPException(401, "wrong user name or password")
        response.set_cookie(
            auth.SESSION_COOKIE,
            token,
            max_age=int(config.session_hours * 3600),
            httponly=True,
            secure=config.secure_cookies,
            samesite="strict",
        )
        audit.record(sessions, "login", user=body.username, host=_client(request))
        return {"username": body.username}

    @app.post("/api/logout")
    def logout(request: Request, response: Response, user: UserDep) -> dict[str, str]:
        """End the session."""
        auth.log_out(sessions, request.cookies.get(auth.SESSION_COOKIE))
        response.delete_cookie(auth.SESSION_COOKIE, httponly=True, secure=config.secure_cookies, samesite="strict")
        audit_event(request, "logout")
        return {"username": user.username}

    def load(study_id: int, user: auth.SignedIn | None = None) -> Study:
        """The study with its reviews and analyses; 404 if there is none or ``user`` may not see its site."""
        with sessions() as session:
            study = session.get(
                Study, study_id, options=[selectinload(Study.reviews), selectinload(Study.analyses)]
            )
        if study is None or (user is not None and not user.may_see(study.site)):
            raise HTTPException(404, f"no study {study_id}")
        return study

    @app.get("/api/health")
    def health() -> dict[str, str]:
        """Liveness (no login needed, nothing else said)."""
        return {"status": "ok"}

    @app.get("/api/ready")
    def ready() -> JSONResponse:
        """Readiness for a load balancer (no login needed): the database answers, the data folder is writable and,
        in distributed mode, the broker answers; 503 with the failed checks otherwise."""
        checks = readiness(service)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503)

    metrics_registry = CollectorRegistry()
    metrics_registry.register(QueueCollector(sessions))

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics (no login needed): this process's analyses and the job database's queue figures."""
        body = generate_latest(REGISTRY) + generate_latest(metrics_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/me")
    def me(user: UserDep) -> dict[str, Any]:
        """The signed-in user, role and CSRF token, and the DICOM / policy settings the UI shows."""
        return {
            "username": user.username,
            "role": user.role,
            "csrf_token": user.csrf_token,
            "ae_title": config.ae_title,
            "dicom_port": config.dicom_port,
            "policy": config.triage_policy,
            "policies": list(triage.POLICIES),
            "windows": list(WINDOWS_HU),
            "destination": str(config.destination) if config.destination else None,
            "sites": list(user.sites),
            "identification": identification_card(),
        }

    @app.get("/api/studies")
    def list_studies(
        user: UserDep,
        status: Annotated[list[str] | None, Query()] = None,
        site: Annotated[list[str] | None, Query()] = None,
        policy: str | None = None,
        positive: bool | None = None,
        min_category: Annotated[int | None, Query(ge=0, le=4)] = None,
        q: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        """The worklist: filtered (``site``: of these sites; a radiologist limited to some sites sees only theirs),
        ordered by the triage policy (or ``policy``), first ``limit`` rows."""
        policy = policy or service.config.triage_policy
        if policy not in triage.POLICIES:
            raise HTTPException(422, f"unknown policy {policy!r}; one of {', '.join(triage.POLICIES)}")
        query = select(Study).options(selectinload(Study.reviews))
        if status:
            bad = set(status) - set(STATUSES)
            if bad:
                raise HTTPException(422, f"unknown status {', '.join(sorted(bad))}")
            query = query.where(Study.status.in_(status))
        if site:
            query = query.where(Study.site.in_(site))
        if not user.all_sites:
            query = query.where(Study.site.in_(user.sites))
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
    def get_study(study_id: int, request: Request) -> dict[str, Any]:
        """One study: worklist row, full report, all reviews and what the viewer needs (audited as a view)."""
        study = load(study_id, user_of(request))
        viewer = (user_of(request).username, study_id)
        if time.monotonic() - recent_views.get(viewer, -VIEW_AUDIT_INTERVAL_S) >= VIEW_AUDIT_INTERVAL_S:
            recent_views[viewer] = time.monotonic()  # the page polls while a study is analysed: one line per visit
            audit_event(request, "view", study)
        data = open_viewer(study.result_dir) if study.status in (DONE, INCOMPLETE) and study.result_dir else None
        slices = list(data.slices) if data else []
        lesion_voxels = np.array([s["lesion_voxels"] for s in slices], np.int64)
        folder = Path(study.result_dir) if study.result_dir else None
        files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else []
        return {
            **study.summary(),
            "report": study.report,
            "reviews": [r.to_dict() for r in study.reviews],
            "analyses": [a.to_dict() for a in study.analyses],
            "expected_instances": study.expected_instances,
            "n_slices": len(slices),
            "slices": slices,  # per slice (z, head to feet): position_mm, instance_number, lesion_voxels
            "lesion_slices": np.flatnonzero(lesion_voxels).tolist(),  # z indices (head to feet) holding lesions
            "most_involved_slice": int(np.argmax(lesion_voxels)) if lesion_voxels.any() else None,
            "files": files,
            # lesions.nii.gz values and the overlay colours, for the MPR viewer's label colour map
            "lesion_labels": [
                {"value": int(label), "name": label.name.lower(), "rgb": list(rgb)} for label, rgb in LESION_RGB.items()
            ],
        }

    @app.get("/api/studies/{study_id}/slices/{index}.png")
    def get_slice(
        study_id: int, index: int, user: UserDep, window: str = "lung", overlay: bool = True, lungs: bool = False
    ) -> Response:
        """One axial slice (canonical z index, head to feet) as PNG, with the lesion overlay on or off."""
        study = load(study_id, user)
        if window not in WINDOWS_HU:
            raise HTTPException(422, f"unknown window {window!r}; one of {', '.join(WINDOWS_HU)}")
        viewer = open_viewer(study.result_dir) if study.result_dir else None
        if viewer is None:
            raise HTTPException(409, "the study has no analysis result yet")
        if not 0 <= index < viewer.n_slices:
            raise HTTPException(404, f"slice {index} outside 0..{viewer.n_slices - 1}")
        hu, lesion, lung_labels = viewer.slice(index)
        png = slice_png(hu, lesion, window, overlay, lung_labels if lungs else None)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/studies/{study_id}/files/{name}")
    def get_file(study_id: int, name: str, user: UserDep) -> FileResponse:
        """A result file (projection.png, report.json, masks, DICOM outputs) by name."""
        study = load(study_id, user)
        path = Path(study.result_dir) / name if study.result_dir else None
        if not _SAFE_FILE.match(name) or path is None or not path.is_file():
            raise HTTPException(404, f"no file {name!r} for study {study_id}")
        return FileResponse(path)

    @app.get("/api/studies/{study_id}/volume.nii.gz")
    def get_volume(study_id: int, user: UserDep) -> Response:
        """The study's CT (HU) as gzipped NIfTI on the grid of its lesions.nii.gz, for the MPR (NiiVue) viewer."""
        study = load(study_id, user)
        folder = Path(study.result_dir) if study.result_dir else None
        viewer = open_viewer(study.result_dir) if study.result_dir else None
        if viewer is None or folder is None or not (folder / "lesions.nii.gz").is_file():
            raise HTTPException(409, "the study has no analysis result yet")
        masks = nib.load(str(folder / "lesions.nii.gz"))
        hu = viewer.hu_volume().transpose(2, 1, 0)  # canonical (z, y, x) stored (x, y, z) as the masks are
        if hu.shape != masks.shape:
            raise HTTPException(409, f"viewer data {hu.shape} and lesion mask {masks.shape} differ: analyse again")
        image = nib.Nifti1Image(hu, masks.affine)
        image.header.set_xyzt_units("mm")
        data = gzip.compress(image.to_bytes(), compresslevel=1)
        return Response(data, media_type="application/gzip", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/studies/{study_id}/retry")
    def retry(study_id: int, request: Request, _admin: AdminDep) -> dict[str, Any]:
        """Queue a failed, incomplete or finished study for analysis again (admin)."""
        study = load(study_id)
        if not requeue(sessions, study_id):
            raise HTTPException(409, "only failed, incomplete or finished studies can be retried")
        audit_event(request, "retry", study)
        return load(study_id).summary()

    @app.delete("/api/studies/{study_id}")
    def delete(study_id: int, request: Request, admin: AdminDep) -> dict[str, int]:
        """Delete a study: received files, results and rows; the audit trail keeps the record (admin)."""
        load(study_id)
        if not delete_study(config, sessions, study_id, "delete", admin.username, _client(request)):
            raise HTTPException(409, "the study is being analysed; delete it when it has finished")
        return {"deleted": study_id}

    @app.post("/api/studies/{study_id}/send")
    def send(study_id: int, request: Request, _admin: AdminDep) -> dict[str, str]:
        """Send the study's SEG / SR / SC to the configured destination again (admin)."""
        study = load(study_id)
        outcome = service.worker.send_results(study_id)
        audit_event(request, "send", study, outcome)
        return {"send_status": outcome}

    @app.post("/api/studies/{study_id}/review")
    def review(study_id: int, body: ReviewIn, request: Request, user: UserDep) -> dict[str, Any]:
        """Confirm or reject a result with a comment, as the logged-in user."""
        study = load(study_id, user)
        if study.status != DONE:
            raise HTTPException(409, "only analysed, complete studies can be reviewed")
        with sessions.begin() as session:
            row = Review(study_id=study_id, decision=body.decision, comment=body.comment, user=user.username)
            session.add(row)
            session.flush()
            saved = row.to_dict()
        audit_event(request, body.decision, study, body.comment)
        return saved

    @app.get("/api/audit")
    def audit_trail(
        _admin: AdminDep,
        action: str | None = None,
        study_id: int | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[dict[str, Any]]:
        """The newest audit events, newest first (admin)."""
        return [e.to_dict() for e in audit.events(sessions, action, study_id, limit)]

    @app.get("/api/audit.csv")
    def audit_csv(
        _admin: AdminDep,
        action: str | None = None,
        study_id: int | None = None,
        limit: Annotated[int, Query(ge=1, le=1_000_000)] = 100_000,
    ) -> Response:
        """The audit trail as a CSV download (admin)."""
        text = audit.to_csv(audit.events(sessions, action, study_id, limit))
        headers = {"Content-Disposition": 'attachment; filename="ctriage-audit.csv"'}
        return Response(text, media_type="text/csv; charset=utf-8", headers=headers)

    @app.post("/api/pull")
    def pull_now(request: Request, _admin: AdminDep) -> dict[str, Any]:
        """Query the configured PACS for new CT studies now and retrieve them (admin)."""
        if service.config.pacs is None:
            raise HTTPException(409, "no PACS configured")
        try:
            retrieved = service.pull()
        except DicomNetworkError as exc:
            raise HTTPException(502, str(exc)) from exc
        audit_event(request, "pull", detail=f"{len(retrieved)} new studies: {' '.join(retrieved)}")
        return {"retrieved": retrieved}

    @app.post("/api/upload")
    async def upload(
        files: Annotated[list[UploadFile], File()], request: Request, _admin: AdminDep
    ) -> dict[str, Any]:
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
        await run_in_threadpool(
            audit_event, request, "upload", None, f"studies {sorted(ids + nifti_ids)}, {len(files)} files"
        )
        return {"study_ids": sorted(ids + nifti_ids), "ignored": ignored}

    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app
