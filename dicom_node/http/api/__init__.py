"""The REST API, mounted at `/api/v1` (docs/console.md): routes per resource (predict, studies,
operations), every one behind a bearer token or the console's session (`deps`), its schema too.
Imports `http.auth` and `http.context`, `pipeline`, `audit` and `store`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request

from dicom_node import __version__
from dicom_node.http.api import operations, predict, studies
from dicom_node.http.api.deps import require
from dicom_node.http.auth import Principal
from dicom_node.http.context import WebContext

DESCRIPTION = (
    "dicom-node's REST API. Every route needs `Authorization: Bearer <token>` (`dicom-node "
    "user token`) or a signed-in console session (whose POSTs also send `X-CSRF-Token`). "
    "Results are decision support, not for diagnostic use."
)
ROUTERS: tuple[APIRouter, ...] = (predict.router, studies.router, operations.router)


def make_api(ctx: WebContext) -> FastAPI:
    """The API of one process over its web context. Its routes are the app's own (a flat
    route table), the schema behind a principal like them; no interactive documentation
    pages, which would load scripts from a CDN."""
    app = FastAPI(
        title="dicom-node",
        version=__version__,
        description=DESCRIPTION,
        routes=[route for router in ROUTERS for route in router.routes],
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = ctx

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request, principal: Annotated[Principal, Depends(require("view"))]) -> Any:
        """The OpenAPI schema, its server the prefix the API is mounted at."""
        root = request.scope.get("root_path", "")
        return {**app.openapi(), **({"servers": [{"url": root}]} if root else {})}

    return app
