"""Deleting studies: the retention policy and an admin's delete remove files, results and rows, audited; nothing
outside the data folders is ever removed."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from ctriage.service.api import create_app
from ctriage.service.db import AuditEvent, Study, utcnow
from ctriage.service.retention import delete_study, purge_expired
from ctriage.service.runtime import Service
from tests.service.conftest import logged_in, store_series


def _analysed(service: Service, ct_series: Path) -> Study:
    study_uid = store_series(service.store, ct_series)
    assert service.worker.run_once()
    with service.sessions() as session:
        return session.scalars(select(Study).where(Study.study_uid == study_uid)).one()


def _audit(service: Service) -> list[tuple[str, str, str]]:
    with service.sessions() as session:
        return [(e.action, e.user, e.study_uid) for e in session.scalars(select(AuditEvent))]


def test_studies_past_the_retention_period_are_deleted(config, ct_series: Path, analyze, tmp_path: Path):
    service = Service.create(replace(config, retention_days=30), analyze)
    old = _analysed(service, ct_series)
    with service.sessions.begin() as session:
        session.execute(update(Study).where(Study.id == old.id).values(received_at=utcnow() - timedelta(days=31)))
    recent = service.store.add_nifti(b"not really nifti", "recent.nii.gz")
    assert Path(old.path).is_dir() and Path(old.result_dir).is_dir()
    assert purge_expired(replace(service.config, retention_days=0), service.sessions) == 0  # 0: keep forever
    assert purge_expired(service.config, service.sessions) == 1
    assert not Path(old.path).exists() and not Path(old.result_dir).exists()
    with service.sessions() as session:
        assert [s.id for s in session.scalars(select(Study))] == [recent.id]
    assert Path(recent.path).is_file()
    assert _audit(service) == [("retention-delete", "retention (30 days)", old.study_uid)]


def test_admin_deletes_a_study(config, ct_series: Path, analyze):
    service = Service.create(config, analyze)
    study = _analysed(service, ct_series)
    app = create_app(service)
    radiologist = logged_in(app, service.sessions, "dr.chase", "radiologist")
    admin = logged_in(app, service.sessions, "dr.cuddy", "admin")
    assert radiologist.delete(f"/api/studies/{study.id}").status_code == 403
    assert admin.delete(f"/api/studies/{study.id}").json() == {"deleted": study.id}
    assert not Path(study.path).exists() and not Path(study.result_dir).exists()
    assert admin.get(f"/api/studies/{study.id}").status_code == 404
    assert ("delete", "dr.cuddy", study.study_uid) in _audit(service)


def test_nothing_outside_the_data_folders_is_removed(config, tmp_path: Path):
    service = Service.create(config)
    outside = tmp_path / "outside"
    outside.mkdir()
    with service.sessions.begin() as session:
        study = Study(study_uid="9.9", source="push", path=str(outside))
        session.add(study)
        session.flush()
        study_id = study.id
    assert delete_study(service.config, service.sessions, study_id, "delete", "admin")
    assert outside.is_dir()
