"""The ASGI application (Starlette): `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dicom_node.http.health import Readiness


def make_app(readiness: Readiness, refresh_metrics: Callable[[], None]) -> Starlette:
    """The app of one process: its readiness checks and the refresh of its database gauges."""

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

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
