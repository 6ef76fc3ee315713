"""Logins, sessions, roles, CSRF and the audit trail over the real app and a real SQLite file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import sqlalchemy.exc
from fastapi.testclient import TestClient
from sqlalchemy import text, update
from typer.testing import CliRunner

from ctriage.service import auth
from ctriage.service.api import create_app
from ctriage.service.cli import app as cli_app
from ctriage.service.db import DONE, AuditEvent, Study, open_db
from ctriage.service.runtime import Service
from tests.service.conftest import PASSWORD, logged_in


@pytest.fixture
def service(config) -> Service:
    service = Service.create(config)
    with service.sessions.begin() as session:
        session.add(Study(study_uid="1.2.3", source="push", path="/x", patient_id="P1", status=DONE,
                          report={"severity": {"ct_category": 1}}))
    return service


@pytest.fixture
def app(service: Service):
    return create_app(service)


def _actions(service: Service) -> list[tuple[str, str]]:
    with service.sessions() as session:
        return [(e.action, e.user) for e in session.query(AuditEvent).order_by(AuditEvent.id)]


def test_everything_but_the_login_page_needs_a_session(app):
    anonymous = TestClient(app, base_url="https://testserver", follow_redirects=False)
    assert anonymous.get("/api/studies").status_code == 401
    assert anonymous.get("/api/studies/1/slices/0.png").status_code == 401
    assert anonymous.get("/api/me").status_code == 401
    for page in ("/", "/study.html?id=1", "/docs"):
        response = anonymous.get(page)
        assert response.status_code == 303 and response.headers["location"].startswith("/login.html?next=%2F")
    assert anonymous.get("/login.html").status_code == 200
    assert anonymous.get("/api/health").json() == {"status": "ok"}  # liveness only, no settings


def test_login_cookie_and_logout(app, service: Service):
    auth.add_user(service.sessions, "dr.chase", PASSWORD, "radiologist")
    client = TestClient(app, base_url="https://testserver")
    assert client.post("/api/login", json={"username": "dr.chase", "password": "wrong password"}).status_code == 401
    assert client.post("/api/login", json={"username": "nobody", "password": PASSWORD}).status_code == 401
    response = client.post("/api/login", json={"username": "dr.chase", "password": PASSWORD})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    me = client.get("/api/me").json()
    assert (me["username"], me["role"]) == ("dr.chase", "radiologist") and len(me["csrf_token"]) > 30
    assert client.post("/api/logout").status_code == 403  # no CSRF token
    assert client.post("/api/logout", headers={"X-CSRF-Token": me["csrf_token"]}).status_code == 200
    assert client.get("/api/studies").status_code == 401
    assert _actions(service) == [("login-failed", "dr.chase"), ("login-failed", "nobody"), ("login", "dr.chase"),
                                 ("logout", "dr.chase")]


def test_passwords_are_argon2_hashes_and_a_change_ends_sessions(app, service: Service):
    client = logged_in(app, service.sessions, "dr.foreman", "radiologist")
    with service.sessions() as session:
        stored = session.execute(text("SELECT password_hash FROM users")).scalar_one()
        tokens = session.execute(text("SELECT token_sha256 FROM login_sessions")).scalars().all()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert client.cookies[auth.SESSION_COOKIE] not in tokens  # only the token's digest is stored
    with pytest.raises(auth.AuthError, match="at least 10"):
        auth.add_user(service.sessions, "short", "123", "admin")
    with pytest.raises(auth.AuthError, match="exists already"):
        auth.add_user(service.sessions, "dr.foreman", PASSWORD, "admin")
    with pytest.raises(auth.AuthError, match="unknown role"):
        auth.add_user(service.sessions, "boss", PASSWORD, "superuser")
    auth.change_user(service.sessions, "dr.foreman", active=False)
    assert client.get("/api/studies").status_code == 401
    assert client.post("/api/login", json={"username": "dr.foreman", "password": PASSWORD}).status_code == 401


def test_writes_need_the_csrf_token_and_the_same_origin(app, service: Service):
    client = logged_in(app, service.sessions, "dr.cuddy", "admin")
    token = client.headers.pop("X-CSRF-Token")
    assert client.post("/api/studies/1/retry").status_code == 403
    assert client.post("/api/studies/1/retry", headers={"X-CSRF-Token": "forged"}).status_code == 403
    cross_site = {"X-CSRF-Token": token, "Origin": "https://evil.example"}
    assert client.post("/api/studies/1/retry", headers=cross_site).status_code == 403
    same_site = {"X-CSRF-Token": token, "Origin": "https://testserver"}
    assert client.post("/api/studies/1/retry", headers=same_site).json()["status"] == "queued"


def test_roles(app, service: Service):
    radiologist = logged_in(app, service.sessions, "dr.chase", "radiologist")
    admin = logged_in(app, service.sessions, "dr.cuddy", "admin")
    for path in ("/api/studies/1/retry", "/api/studies/1/send", "/api/pull"):
        assert radiologist.post(path).status_code == 403, path
    assert radiologist.post("/api/upload", files=[("files", ("a.dcm", b"x", "x"))]).status_code == 403
    assert radiologist.get("/api/audit").status_code == 403 and radiologist.get("/api/audit.csv").status_code == 403
    review = radiologist.post("/api/studies/1/review", json={"decision": "confirmed", "comment": "ok", "user": "x"})
    assert review.json()["user"] == "dr.chase"  # the reviewer is the logged-in user, not what the form says
    assert admin.post("/api/studies/1/retry").status_code == 200
    assert admin.get("/api/audit").status_code == 200


def test_audit_trail_views_reviews_retries_and_csv(app, service: Service):
    radiologist = logged_in(app, service.sessions, "dr.chase", "radiologist")
    admin = logged_in(app, service.sessions, "dr.cuddy", "admin")
    radiologist.get("/api/studies/1")
    radiologist.get("/api/studies/1")  # the page polling again: one line per visit
    radiologist.post("/api/studies/1/review", json={"decision": "rejected", "comment": "=HYPERLINK(1)"})
    admin.post("/api/studies/1/retry")
    events = admin.get("/api/audit").json()
    assert [(e["action"], e["user"], e["study_id"]) for e in events[:3]] == [
        ("retry", "dr.cuddy", 1), ("rejected", "dr.chase", 1), ("view", "dr.chase", 1)]
    assert events[0]["study_uid"] == "1.2.3" and events[0]["host"] == "testclient"
    assert [e["action"] for e in admin.get("/api/audit", params={"action": "view"}).json()] == ["view"]
    exported = admin.get("/api/audit.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["action"] for r in rows[:3]] == ["retry", "rejected", "view"]
    assert rows[1]["detail"] == "'=HYPERLINK(1)"  # no formula when opened in a spreadsheet
    with service.sessions.begin() as session, pytest.raises(sqlalchemy.exc.DatabaseError, match="append-only"):
        session.execute(update(AuditEvent).values(user="nobody"))
    with service.sessions.begin() as session, pytest.raises(sqlalchemy.exc.DatabaseError, match="append-only"):
        session.execute(text("DELETE FROM audit_events"))


def test_first_admin_from_the_command_line(tmp_path: Path):
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path)]
    added = runner.invoke(cli_app, ["users", "add", "root.admin", "--role", "admin", *args],
                          input=f"{PASSWORD}\n{PASSWORD}\n", env={"CTRIAGE_CONFIG": ""})
    assert added.exit_code == 0, added.output
    assert PASSWORD not in added.output
    short = runner.invoke(cli_app, ["users", "add", "x", "--role", "admin", "--password-stdin", *args],
                          input="short\n", env={"CTRIAGE_CONFIG": ""})
    assert short.exit_code == 2 and "at least 10" in short.output
    listed = runner.invoke(cli_app, ["users", "list", *args], env={"CTRIAGE_CONFIG": ""})
    assert listed.output.split() == ["root.admin", "admin", "active"]
    sessions = open_db(f"sqlite:///{tmp_path / 'ctriage.db'}")
    assert auth.log_in(sessions, "root.admin", PASSWORD, 1.0) is not None
    with sessions() as session:
        (event,) = session.query(AuditEvent).all()
    assert (event.action, event.user, event.detail) == ("user-added", "command line", "root.admin: role=admin, "
                                                                                       "new password")
