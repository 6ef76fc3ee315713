"""Logins, sessions and roles.

Local users with Argon2id password hashes (argon2-cffi) in the database; a login opens a server-side session whose
random token travels in a Secure, HttpOnly, SameSite=Strict cookie (only its SHA-256 is stored), with its own CSRF
token that every write must send back in the ``X-CSRF-Token`` header. Two roles: ``radiologist`` (worklist,
viewer, review) and ``admin`` (also retry, send, delete, upload, pull, audit trail). The first admin is created
with ``ctriage users add NAME --role admin``; there is no default user or password. A radiologist may be limited to
the studies of some sites (hospitals, ``--sites``); without sites, and as an admin, one sees every site.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from ctriage.service.db import LoginSession, User, as_utc, utcnow

RADIOLOGIST, ADMIN = "radiologist", "admin"
ROLES = (RADIOLOGIST, ADMIN)
SESSION_COOKIE = "ctriage_session"
CSRF_HEADER = "X-CSRF-Token"
MIN_PASSWORD_LENGTH = 10
_HASHER = PasswordHasher()  # argon2-cffi's defaults: Argon2id, RFC 9106 low-memory profile
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))  # verified against when the user does not exist (same timing)


class AuthError(ValueError):
    """A user cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class SignedIn:
    """The user behind a valid session, and that session's CSRF token."""

    username: str
    role: str
    csrf_token: str
    sites: tuple[str, ...] = ()  # the sites whose studies a radiologist sees; (): all

    @property
    def is_admin(self) -> bool:
        """Whether the user may retry, send, delete, upload, pull and read the audit trail."""
        return self.role == ADMIN

    @property
    def all_sites(self) -> bool:
        """Whether the user sees the studies of every site."""
        return self.is_admin or not self.sites

    def may_see(self, site: str) -> bool:
        """Whether the user sees studies of ``site``."""
        return self.all_sites or site in self.sites


def site_list(sites: str | None) -> tuple[str, ...]:
    """Comma-separated site names as a tuple (blanks dropped); None stays ()."""
    return tuple(s.strip() for s in (sites or "").split(",") if s.strip())


def _check(username: str, password: str | None, role: str | None) -> None:
    if not username or len(username) > 64 or not username.isprintable() or username != username.strip():
        raise AuthError("a user name is 1-64 printable characters without leading or trailing spaces")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if role is not None and role not in ROLES:
        raise AuthError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def add_user(
    sessions: sessionmaker[Session], username: str, password: str, role: str, sites: str | None = None
) -> None:
    """Create a user (``sites``: comma-separated sites a radiologist sees, "" all); AuthError when the name is taken
    or the name, password or role is not acceptable."""
    _check(username, password, role)
    with sessions.begin() as session:
        if session.scalars(select(User).where(User.username == username)).first() is not None:
            raise AuthError(f"user {username!r} exists already")
        hashed = _HASHER.hash(password)
        session.add(User(username=username, password_hash=hashed, role=role, sites=",".join(site_list(sites))))


def change_user(
    sessions: sessionmaker[Session],
    username: str,
    password: str | None = None,
    role: str | None = None,
    active: bool | None = None,
    sites: str | None = None,
) -> None:
    """Set a user's password, role, active flag or sites ("": all); a change ends the user's open sessions."""
    _check(username, password, role)
    with sessions.begin() as session:
        user = session.scalars(select(User).where(User.username == username)).first()
        if user is None:
            raise AuthError(f"no user {username!r}")
        if password is not None:
            user.password_hash = _HASHER.hash(password)
        if role is not None:
            user.role = role
        if active is not None:
            user.active = active
        if sites is not None:
            user.sites = ",".join(site_list(sites))
        session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))


def list_users(sessions: sessionmaker[Session]) -> list[tuple[str, str, bool, str]]:
    """(user name, role, active, comma-separated sites or "") of every user, by name."""
    with sessions() as session:
        users = session.scalars(select(User).order_by(User.username))
        return [(u.username, u.role, u.active, u.sites or "") for u in users]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def log_in(sessions: sessionmaker[Session], username: str, password: str, lifetime_h: float) -> str | None:
    """Check the password and open a session; returns its token, or None for a wrong name or password."""
    with sessions.begin() as session:
        user = session.scalars(select(User).where(User.username == username, User.active.is_(True))).first()
        try:
            _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if _HASHER.check_needs_rehash(user.password_hash):
            user.password_hash = _HASHER.hash(password)
        token = secrets.token_urlsafe(32)
        now = utcnow()
        session.execute(delete(LoginSession).where(LoginSession.expires_at < now))
        session.add(
            LoginSession(
                token_sha256=_digest(token),
                user_id=user.id,
                csrf_token=secrets.token_urlsafe(32),
                expires_at=now + timedelta(hours=lifetime_h),
            )
        )
        return token


def signed_in(sessions: sessionmaker[Session], token: str | None) -> SignedIn | None:
    """The user of a session token, if the session exists, has not expired and the user is active."""
    if not token:
        return None
    with sessions() as session:
        found = session.execute(
            select(LoginSession, User)
            .join(User, User.id == LoginSession.user_id)
            .where(LoginSession.token_sha256 == _digest(token), User.active.is_(True))
        ).first()
    if found is None or as_utc(found[0].expires_at) <= utcnow():
        return None
    user = found[1]
    return SignedIn(user.username, user.role, found[0].csrf_token, site_list(user.sites))


def log_out(sessions: sessionmaker[Session], token: str | None) -> None:
    """End a session."""
    if token:
        with sessions.begin() as session:
            session.execute(delete(LoginSession).where(LoginSession.token_sha256 == _digest(token)))
