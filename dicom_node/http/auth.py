"""Accounts of the console and the REST API: local users with argon2id password hashes
(argon2-cffi), roles and what each may do, API tokens (only their SHA-256 kept), sessions in
signed cookies (Starlette's SessionMiddleware), CSRF tokens on every form and sign-in throttling.

Roles: viewer (sees studies; patient data only once signed in), operator (also retries,
reprocesses and retracts), auditor (also the audit trail), admin (everything).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from dicom_node.store.schema import ApiToken, User, utcnow

ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"view"}),
    "operator": frozenset({"view", "act"}),
    "auditor": frozenset({"view", "audit"}),
    "admin": frozenset({"view", "act", "audit"}),
}
SESSION_USER = "user"
SESSION_CSRF = "csrf"
CSRF_FIELD = "csrf"
_hasher = PasswordHasher()  # argon2id with the library's current parameters
_DUMMY = _hasher.hash("not a password")  # a missing user costs as much as a wrong password


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """Who is signed in (session cookie or API token) and what the role allows."""

    name: str
    role: str

    def can(self, permission: str) -> bool:
        return permission in ROLES.get(self.role, frozenset())


class AccountError(ValueError):
    """A user or token that cannot be made (bad name, role or password)."""


def add_user(sessions: sessionmaker[Session], name: str, role: str, password: str) -> int:
    """Make a user; AccountError for an unknown role, a taken name or a short password."""
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if not name or len(name) > 64 or not name.isprintable():
        raise AccountError("a user name is 1 to 64 printable characters")
    if len(password) < 10:
        raise AccountError("a password has at least 10 characters")
    with sessions.begin() as session:
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise AccountError(f"user {name!r} exists")
        user = User(
            name=name,
            role=role,
            password_hash=_hasher.hash(password),
            created_at=utcnow(),
            disabled=False,
        )
        session.add(user)
        session.flush()
        return int(user.id)


def authenticate(sessions: sessionmaker[Session], name: str, password: str) -> Principal | None:
    """The user when the password is right (and the account enabled), else None."""
    with sessions() as session:
        user = session.scalar(select(User).where(User.name == name))
        stored = user.password_hash if user is not None else _DUMMY
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled:
            return None
        return Principal(name=user.name, role=user.role)


def make_token(sessions: sessionmaker[Session], name: str, label: str = "api") -> str:
    """A new API token of the user (shown once; only its SHA-256 is stored)."""
    token = secrets.token_urlsafe(32)
    with sessions.begin() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise AccountError(f"no user {name!r}")
        session.add(
            ApiToken(user_id=user.id, token_sha256=_digest(token), label=label, created_at=utcnow())
        )
    return token


def principal_of_token(sessions: sessionmaker[Session], token: str) -> Principal | None:
    """The enabled user whose token this is; its last use recorded."""
    with sessions.begin() as session:
        row = session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_sha256 == _digest(token))
        ).one_or_none()
        if row is None or row.User.disabled:
            return None
        row.ApiToken.last_used_at = utcnow()
        return Principal(name=row.User.name, role=row.User.role)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def signed_in(request: Request) -> Principal | None:
    """The session's user (the cookie is signed; the role is read again at sign-in only)."""
    user = request.session.get(SESSION_USER)
    if not isinstance(user, dict) or "name" not in user or user.get("role") not in ROLES:
        return None
    return Principal(name=str(user["name"]), role=str(user["role"]))


def sign_in(request: Request, principal: Principal) -> None:
    """A fresh session for the user (a new CSRF token too: no fixation)."""
    request.session.clear()
    request.session[SESSION_USER] = {"name": principal.name, "role": principal.role}
    request.session[SESSION_CSRF] = secrets.token_urlsafe(24)


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (forms carry it as `csrf`)."""
    token = request.session.get(SESSION_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(24)
        request.session[SESSION_CSRF] = token
    return token


def csrf_ok(request: Request, submitted: object) -> bool:
    """The form's token matches the session's (compared in constant time)."""
    expected = request.session.get(SESSION_CSRF)
    return (
        isinstance(expected, str)
        and isinstance(submitted, str)
        and hmac.compare_digest(expected, submitted)
    )


class Throttle:
    """Sign-in failures per (user name, client address): more than `limit` within `window`
    seconds and further attempts are refused until the oldest failure ages out."""

    def __init__(self, limit: int = 5, window: float = 300.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, key: tuple[str, str]) -> bool:
        with self._lock:
            failures = self._failures[key]
            now = time.monotonic()
            while failures and now - failures[0] > self.window:
                failures.popleft()
            return len(failures) >= self.limit

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures[key].append(time.monotonic())

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)
