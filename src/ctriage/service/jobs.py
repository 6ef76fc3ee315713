"""Analysis workers: queue quiet studies, analyse them one per thread, store results, send DICOM back.

A job's state lives in the database only, so a restart picks up where the process stopped: studies still
receiving are queued after their quiet period, interrupted jobs are queued again. A failure is recorded with
its reason and never deletes the received files.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ctriage import __version__
from ctriage.io.errors import IncompleteSeriesError, InputError
from ctriage.service import pacs
from ctriage.service.completeness import instance_count_reason, lung_cut_reason
from ctriage.service.config import ServiceConfig
from ctriage.service.db import (
    DONE,
    FAILED,
    INCOMPLETE,
    RECEIVING,
    SENDING,
    Analysis,
    Study,
    as_utc,
    claim_next,
    promote_quiet,
    utcnow,
)
from ctriage.service.viewer import save_viewer

if TYPE_CHECKING:
    from ctriage.result import StudyResult

log = logging.getLogger(__name__)

Analyze = Callable[..., "StudyResult"]  # analyze_path(path, progress=...) -> StudyResult


def default_analyze(path: Path, progress: Callable[[str], None] | None = None) -> StudyResult:
    """The real pipeline (imported on first use so the service starts fast)."""
    from ctriage.pipeline import analyze_path

    return analyze_path(path, progress=progress)


def release_freed_memory() -> None:
    """Give the heap memory freed by the analysis back to the system (glibc keeps it otherwise, so the next step's
    peak, the SEG build, would add to it, and a long-running service would grow); nothing on other C libraries."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def grew_while_running(study: Study) -> bool:
    """Whether the study received an instance after its analysis started."""
    return study.started_at is not None and as_utc(study.last_instance_at) > as_utc(study.started_at)


def model_version(result: StudyResult) -> str:
    """The software and model versions of an analysis, as one string ("ctriage 0.1.0; identification 3; ...")."""
    models = sorted(result.models.items())
    return "; ".join([f"ctriage {__version__}", *(f"{stage} {version}" for stage, version in models)])[:256]


def incomplete_reasons(result: StudyResult, expected_instances: dict[str, int] | None) -> list[str]:
    """Why an analysed series is not complete: fewer instances than the PACS reported, lungs cut at an edge."""
    slice_files = result.volume.slice_files
    reasons = [instance_count_reason(Path(slice_files[0]).parent, expected_instances)] if slice_files else []
    reasons.append(lung_cut_reason(result.lungs.labels))
    return [r for r in reasons if r]


class Worker:
    """Background analysis threads over the job database."""

    def __init__(
        self, config: ServiceConfig, sessions: sessionmaker[Session], analyze: Analyze = default_analyze
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.analyze = analyze
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start ``config.workers`` threads polling the queue every ``config.poll_interval_s``."""
        self._stop.clear()
        for index in range(max(self.config.workers, 1)):
            thread = threading.Thread(target=self._loop, name=f"ctriage-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the threads to stop after their current job and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the database was unavailable; keep the worker alive
                log.exception("worker loop error")
                busy = False
            if not busy:
                self._stop.wait(self.config.poll_interval_s)

    def run_once(self) -> bool:
        """Queue quiet studies, then analyse the next queued one; False when there was nothing to do."""
        promote_quiet(self.sessions, self.config.quiet_period_s)
        study = claim_next(self.sessions)
        if study is None:
            return False
        self.process(study)
        return True

    def _set(self, study_id: int, **values: Any) -> None:
        with self.sessions.begin() as session:
            study = session.get(Study, study_id)
            for key, value in values.items():
                setattr(study, key, value)

    def process(self, study: Study) -> None:
        """Analyse one claimed study and record the outcome (done, incomplete or failed with the reason, or
        receiving again when instances arrived meanwhile)."""
        outdir = self.config.results_dir / f"{study.id}-{study.attempts}"  # a fresh folder per attempt
        log.info("analysing study %s (%s)", study.id, study.study_uid)
        try:
            from ctriage.report import prepare_outdir

            prepare_outdir(outdir)  # writable, enough free space: before the analysis, which may take a while
            result = self.analyze(Path(study.path), progress=lambda stage: self._set(study.id, progress=stage))
            reasons = incomplete_reasons(result, study.expected_instances)
            result.warnings.extend(f"incomplete series: {reason}" for reason in reasons)
            self._save(result, outdir)
        except IncompleteSeriesError as exc:  # slices missing: analysed again when more instances arrive
            log.warning("study %s incomplete: %s", study.id, exc)
            self._end_without_result(study.id, INCOMPLETE, str(exc))
            return
        except InputError as exc:
            self._fail(study.id, str(exc))
            return
        except Exception as exc:  # a bug or resource problem: keep the reason, keep the files, allow retry
            log.error("analysis of study %s crashed:\n%s", study.id, traceback.format_exc())
            self._crashed(study.id, f"internal error: {type(exc).__name__}: {exc}")
            return
        result.set_completeness(reasons)  # in the database's report (the web UI), not in the report.json written
        release_freed_memory()
        # DICOM results are built only to be sent: for a complete series, with a destination
        dicom_problem = "" if reasons or self.config.destination is None else self._save_dicom(result, study, outdir)
        will_send = not dicom_problem and self.config.destination is not None and (outdir / "dicom").is_dir()
        if dicom_problem:
            send_status = f"failed: cannot build DICOM results: {dicom_problem}"
        else:
            send_status = SENDING if will_send else ""
        self._finish(study, result, outdir, send_status, "; ".join(reasons))
        if will_send:
            self.send_results(study.id)

    def _save(self, result: StudyResult, outdir: Path) -> None:
        """Write report files and the viewer's slices."""
        from ctriage.report import write_outputs

        write_outputs(result, outdir)
        save_viewer(result, outdir)

    def _save_dicom(self, result: StudyResult, study: Study, outdir: Path) -> str:
        """Write SEG / SR / SC for single-frame DICOM input, replacing those of the study's latest earlier result;
        returns why that failed ("" when it did not).

        A problem here (an unusual source header) leaves the analysis valid: it is reported as a send failure.
        """
        from ctriage.report.dicom_out import build_dicom_outputs, write_dicom_outputs

        slice_files = result.volume.slice_files
        if not slice_files:
            return ""
        summary = result.projection if self.config.send_secondary_capture else None
        try:
            outputs = build_dicom_outputs(result, slice_files, summary, self._earlier_outputs(study.id))
            write_dicom_outputs(outputs, outdir / "dicom")
        except Exception as exc:  # highdicom validation of third-party headers
            log.error("DICOM results of %s failed:\n%s", outdir, traceback.format_exc())
            return f"{type(exc).__name__}: {exc}"
        return ""

    def _earlier_outputs(self, study_id: int) -> dict[str, Any]:
        """Headers of the DICOM results of the study's latest earlier analysis that has them, by Modality."""
        import pydicom

        with self.sessions() as session:
            folders = [
                Path(a.result_dir) / "dicom"
                for a in session.scalars(
                    select(Analysis).where(Analysis.study_id == study_id).order_by(Analysis.id.desc())
                )
            ]
        for folder in folders:
            files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
            if files:
                headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
                return {str(ds.Modality): ds for ds in headers}
        return {}

    def _fail(self, study_id: int, reason: str) -> None:
        log.warning("study %s failed: %s", study_id, reason)
        self._end_without_result(study_id, FAILED, reason)

    def _crashed(self, study_id: int, reason: str) -> None:
        """The analysis raised an unexpected error (a bug, memory, disk): failed with the reason, retried by hand."""
        self._fail(study_id, reason)

    def _owned(self, session: Session, study_id: int) -> Study | None:
        """The row to record the outcome of the analysis of study ``study_id`` on (None: discard the outcome)."""
        return session.get(Study, study_id)

    def _end_without_result(self, study_id: int, status: str, reason: str) -> None:
        """Record an analysis that gave no result (``status`` failed or incomplete, with the reason); a study that
        received new instances while it ran is receiving again instead, so that it is analysed again."""
        with self.sessions.begin() as session:
            study = self._owned(session, study_id)
            if study is None:
                return
            study.status = RECEIVING if grew_while_running(study) else status
            study.error, study.progress, study.finished_at = reason, "", utcnow()

    def _finish(self, claimed: Study, result: StudyResult, outdir: Path, send_status: str, reason: str) -> None:
        """Store the result as the study's current one and mark earlier results superseded by it; a study that
        received new instances while running is analysed again later."""
        with self.sessions.begin() as session:
            study = self._owned(session, claimed.id)
            if study is None:
                return
            grew = grew_while_running(study)
            analysis = Analysis(
                study_id=study.id,
                attempt=claimed.attempts,
                status=INCOMPLETE if reason else DONE,
                reason=reason,
                result_dir=str(outdir),
                n_instances=claimed.n_instances,
                series_uid=str(result.volume.meta.series_instance_uid or "")[:128],
                model_version=model_version(result),
            )
            session.add(analysis)
            session.flush()
            for earlier in study.analyses:
                if earlier.id != analysis.id and earlier.superseded_at is None:
                    earlier.superseded_at, earlier.superseded_by = utcnow(), analysis.id
            study.status = RECEIVING if grew else analysis.status
            study.error = reason
            study.progress = ""
            study.finished_at = utcnow()
            study.result_dir = str(outdir)
            study.report = result.to_dict()
            study.probability = None if result.identification is None else result.identification.probability
            study.ct_category = result.severity.ct_category
            study.max_ratio = result.severity.max_ratio
            analysed_series = str(result.volume.meta.series_description or "")
            study.series_description = analysed_series[:128] or study.series_description
            study.send_status = send_status

    def send_results(self, study_id: int) -> str:
        """C-STORE the study's SEG / SR / SC to the configured destination; records, returns the outcome."""
        import pydicom

        with self.sessions() as session:
            study = session.get(Study, study_id)
            folder = Path(study.result_dir) / "dicom" if study and study.result_dir else None
            incomplete = study is not None and study.status == INCOMPLETE
        files = sorted(folder.glob("*.dcm")) if folder and folder.is_dir() else []
        if self.config.destination is None:
            outcome = "failed: no destination configured"
        elif incomplete:
            outcome = "failed: the series is incomplete; results are sent once it is complete"
        elif not files:
            outcome = "failed: no DICOM results (the study was not single-frame DICOM, or is not analysed)"
        else:
            try:
                pacs.send_datasets(self.config, self.config.destination, [pydicom.dcmread(f) for f in files])
                outcome = f"sent {len(files)} objects to {self.config.destination} at {utcnow():%Y-%m-%d %H:%M:%S}Z"
            except (pacs.DicomNetworkError, OSError) as exc:
                outcome = f"failed: {exc}"
        self._set(study_id, send_status=outcome)
        return outcome
