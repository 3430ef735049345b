"""The API's dependencies: the process's web context, and the principal every route needs
(a bearer token, or the console's signed-in session: then unsafe methods also need the
session's CSRF token in `X-CSRF-Token`), checked against the route's permission."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from fastapi import HTTPException, Request

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.http import auth
from dicom_node.http.context import WebContext

CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def context(request: Request) -> WebContext:
    """The web context `make_api` was built with."""
    return cast(WebContext, request.app.state.context)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authenticate(request: Request) -> auth.Principal:
    """The caller, or 401: a bearer token (checked first, and alone when sent), else the
    signed-in session, whose POSTs carry the CSRF token (403 without it)."""
    token = _bearer(request)
    if token is not None:
        principal = auth.principal_of_token(context(request).sessions, token)
        if principal is None:
            raise _unauthorised("the API token is unknown, or its user disabled")
        return principal
    principal = auth.signed_in(request) if "session" in request.scope else None
    if principal is None:
        raise _unauthorised("sign in, or send an API token as 'Authorization: Bearer <token>'")
    if request.method not in SAFE_METHODS and not auth.csrf_ok(
        request, request.headers.get(CSRF_HEADER)
    ):
        raise HTTPException(403, f"a signed-in session's {request.method} needs {CSRF_HEADER}")
    return principal


def _unauthorised(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def require(permission: str) -> Callable[[Request], auth.Principal]:
    """A dependency: the caller when their role has `permission`, else 403."""

    def check(request: Request) -> auth.Principal:
        principal = authenticate(request)
        if not principal.can(permission):
            raise HTTPException(
                403, f"role {principal.role!r} may not {permission} (docs/console.md: roles)"
            )
        return principal

    check.__name__ = f"require_{permission}"
    return check


def peer(request: Request) -> Peer:
    """The client's address, the audit row's network access point."""
    client = request.client
    return Peer(address=f"{client.host}:{client.port}" if client else None)


def record(
    request: Request,
    event: Event,
    principal: auth.Principal,
    outcome: Outcome = Outcome.SUCCESS,
    **values: Any,
) -> None:
    """One audit row of the request, with the user as the active participant."""
    with context(request).sessions.begin() as session:
        audit.record(session, event, outcome, peer=peer(request), user_id=principal.name, **values)
