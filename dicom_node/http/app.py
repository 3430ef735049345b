"""The ASGI application (Starlette): `/healthz`, `/readyz`, `/metrics`, and, where the process
has a web context, the console (`console`) and the REST API mounted at `/api/v1` (`api`), in
signed session cookies (HttpOnly, SameSite=strict, Secure when `http_secure_cookies`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dicom_node.http import console
from dicom_node.http.api import make_api
from dicom_node.http.context import WebContext
from dicom_node.http.health import Readiness

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/login")  # reachable without signing in


def make_app(
    readiness: Readiness, refresh_metrics: Callable[[], None], web: WebContext | None = None
) -> Starlette:
    """The app of one process: its readiness checks, the refresh of its database gauges and,
    with `web`, the console and the REST API."""

    async def healthz(request: Request) -> Response:
        """Alive: the process runs and its event loop answers."""
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        """Ready (200) or not (503), with every check's outcome."""
        snapshot = readiness.snapshot()
        return JSONResponse(snapshot.as_json(), status_code=200 if snapshot.ready else 503)

    async def metrics(request: Request) -> Response:
        """The Prometheus exposition of this process's registry."""
        await run_in_threadpool(refresh_metrics)
        body = await run_in_threadpool(generate_latest, REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if web is None:
        return Starlette(routes=routes)
    return Starlette(routes=routes + web_routes(web), middleware=web_middleware(web))


def console_app(web: WebContext) -> Starlette:
    """The console and the REST API alone (`console_port`: on a listener of their own)."""
    return Starlette(routes=web_routes(web), middleware=web_middleware(web))


def web_routes(web: WebContext) -> list[BaseRoute]:
    return [*console.routes(web), Mount("/api/v1", app=make_api(web))]


def web_middleware(web: WebContext) -> list[Middleware]:
    """Signed session cookies (HttpOnly by Starlette, SameSite=strict, 8 hours)."""
    secret = web.settings.http_session_secret or secrets.token_urlsafe(32)
    return [
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie="dicom_node_session",
            max_age=8 * 3600,
            same_site="strict",
            https_only=web.settings.http_secure_cookies,
        )
    ]
