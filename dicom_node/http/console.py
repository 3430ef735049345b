"""The web console: server-rendered pages (Jinja2) for viewers, operators and auditors
(docs/console.md). Every page needs a signed-in user; every form carries the session's CSRF
token; every sign-in, failed sign-in, search and study page viewed is an audit event with the
user as the active participant."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.audit import export as audit_export
from dicom_node.audit.chain import verify
from dicom_node.errors import NodeError
from dicom_node.http import auth, views
from dicom_node.http.api.queries import recent_studies
from dicom_node.http.context import WebContext
from dicom_node.pipeline.deliver import deliver, restart_window
from dicom_node.pipeline.dispatch import schedule_of
from dicom_node.pipeline.feedback import agreement, record_feedback
from dicom_node.pipeline.reprocess import request_reprocess
from dicom_node.pipeline.retract import retract_study
from dicom_node.store.schema import ResultObject
from dicom_node.store.spool import Spool

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
Page = Callable[[Request], Awaitable[Response]]


def _peer(request: Request) -> Peer:
    return Peer(address=f"{request.client.host}:{request.client.port}" if request.client else "")


def _record(ctx: WebContext, request: Request, event: Event, **values: Any) -> None:
    with ctx.sessions.begin() as session:
        audit.record(session, event, peer=_peer(request), **values)


def _page(request: Request, name: str, **values: Any) -> Response:
    user = auth.signed_in(request)
    return TEMPLATES.TemplateResponse(
        request, name, {"user": user, "csrf": auth.csrf_token(request), **values}
    )


def guarded(ctx: WebContext, permission: str, handler: Callable[..., Awaitable[Response]]) -> Page:
    """The page for signed-in users whose role has `permission`; others go to the sign-in
    page (303) or get 403; a POST without the session's CSRF token gets 403."""

    async def page(request: Request) -> Response:
        user = auth.signed_in(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        if not user.can(permission):
            return HTMLResponse("Forbidden: your role does not allow this.", status_code=403)
        form = None
        if request.method == "POST":
            form = await request.form()
            if not auth.csrf_ok(request, form.get(auth.CSRF_FIELD)):
                return HTMLResponse("Forbidden: missing or wrong CSRF token.", status_code=403)
        return await handler(ctx, request, user, form)

    return page


async def login_form(request: Request) -> Response:
    return _page(request, "login.html", error=None)


def login(ctx: WebContext) -> Page:
    async def submit(request: Request) -> Response:
        form = await request.form()
        if not auth.csrf_ok(request, form.get(auth.CSRF_FIELD)):
            return HTMLResponse("Forbidden: missing or wrong CSRF token.", status_code=403)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        key = (name, request.client.host if request.client else "")
        if ctx.throttle.blocked(key):
            _record(
                ctx,
                request,
                Event.USER_LOGIN,
                outcome=Outcome.FAILURE,
                user_id=name,
                detail="refused: too many failed sign-ins, try again later",
            )
            return _page(
                request, "login.html", error="Too many failed sign-ins. Wait a few minutes."
            )
        principal = await run_in_threadpool(auth.authenticate, ctx.sessions, name, password)
        if principal is None:
            ctx.throttle.failed(key)
            _record(
                ctx,
                request,
                Event.USER_LOGIN,
                outcome=Outcome.FAILURE,
                user_id=name,
                detail="wrong user name or password",
            )
            return _page(request, "login.html", error="Wrong user name or password.")
        ctx.throttle.succeeded(key)
        auth.sign_in(request, principal)
        _record(ctx, request, Event.USER_LOGIN, user_id=name, detail=f"role {principal.role}")
        return RedirectResponse("/", status_code=303)

    return submit


async def logout(ctx: WebContext, request: Request, user: auth.Principal, form: Any) -> Response:
    _record(ctx, request, Event.USER_LOGOUT, user_id=user.name)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def home(ctx: WebContext, request: Request, user: auth.Principal, form: Any) -> Response:
    with ctx.sessions() as session:
        figures = views.overview(session, ctx.settings)
    model = ctx.services.bundle.identity if ctx.services else None
    return _page(request, "overview.html", o=figures, model=model)


async def study_list(
    ctx: WebContext, request: Request, user: auth.Principal, form: Any
) -> Response:
    query = request.query_params.get("q", "").strip()
    with ctx.sessions() as session:
        rows = recent_studies(session, query, views.RECENT)
    if query:
        _record(ctx, request, Event.STUDY_QUERIED, user_id=user.name, detail=f"search {query!r}")
    return _page(request, "studies.html", rows=rows, q=query)


async def study(ctx: WebContext, request: Request, user: auth.Principal, form: Any) -> Response:
    uid = request.path_params["uid"]
    with ctx.sessions() as session:
        content = views.study_page(session, uid)
    if content is None:
        return HTMLResponse("No such study on this node.", status_code=404)
    _record(
        ctx,
        request,
        Event.STUDY_VIEWED,
        user_id=user.name,
        study_instance_uid=uid,
        patient_id=content.patient_id or None,
        detail="console study page",
    )
    labels = list(ctx.services.labels) if ctx.services else content.labels
    return _page(
        request, "study.html", s=content, labels=labels, message=request.query_params.get("m")
    )


async def object_image(
    ctx: WebContext, request: Request, user: auth.Principal, form: Any
) -> Response:
    with ctx.sessions() as session:
        row = session.scalar(
            select(ResultObject).where(ResultObject.sop_instance_uid == request.path_params["sop"])
        )
    if row is None or row.kind != "sc":
        return HTMLResponse("No such image.", status_code=404)
    png = await run_in_threadpool(views.object_png, Path(row.path))
    return Response(png, media_type="image/png")


def _back(uid: str, message: str) -> Response:
    from urllib.parse import quote

    return RedirectResponse(f"/studies/{uid}?m={quote(message)}", status_code=303)


async def retry(ctx: WebContext, request: Request, user: auth.Principal, form: Any) -> Response:
    delivery_id = int(request.path_params["id"])
    uid = str(form.get("study", ""))
    restart_window(ctx.sessions, [delivery_id])
    _record(
        ctx,
        request,
        Event.DELIVERY_RETRIED,
        user_id=user.name,
        study_instance_uid=uid or None,
        detail=f"delivery {delivery_id} sent again from the console",
    )
    sender = ctx.sender
    sent, _ = await run_in_threadpool(
        lambda: deliver(
            ctx.sessions,
            sender,
            [delivery_id],
            model=None,
            destinations=ctx.settings.destinations,
            schedule=schedule_of(ctx.settings),
        )
    )
    return _back(uid, "Delivery sent." if sent else "The delivery failed again.")


async def reprocess(ctx: WebContext, request: Request, user: auth.Principal, form: Any) -> Response:
    uid = request.path_params["uid"]
    if form.get("confirm") != "yes":
        return _back(uid, "Not reprocessed: tick the confirmation box.")
    try:
        job = request_reprocess(ctx.sessions, uid, user_id=user.name)
    except NodeError as exc:
        return _back(uid, f"Not reprocessed: {exc}")
    return _back(uid, f"Reprocessing queued (job {job}).")


async def retract(ctx: WebContext, request: Request, user: auth.Principal, form: Any) -> Response:
    uid = request.path_params["uid"]
    if form.get("confirm") != "yes":
        return _back(uid, "Not retracted: tick the confirmation box.")
    sender = ctx.sender
    try:
        withdrawn, _, failed = await run_in_threadpool(
            lambda: retract_study(
                ctx.sessions,
                Spool(ctx.settings.spool_dir),
                sender,
                uid,
                destinations=ctx.settings.destinations,
                user_id=user.name,
            )
        )
    except NodeError as exc:
        return _back(uid, f"Not retracted: {exc}")
    return _back(
        uid,
        f"{withdrawn} result object(s) withdrawn"
        + (f", {failed} note(s) failed" if failed else "."),
    )


async def feedback(ctx: WebContext, request: Request, user: auth.Principal, form: Any) -> Response:
    uid = request.path_params["uid"]
    sop, label, verdict = (str(form.get(k, "")) for k in ("sop", "label", "verdict"))
    try:
        with ctx.sessions.begin() as session:
            record_feedback(
                session,
                study_instance_uid=uid,
                sop_instance_uid=sop,
                label=label,
                verdict=verdict,
                user_name=user.name,
                peer=_peer(request),  # audited (feedback_recorded) in the same transaction
            )
    except ValueError as exc:
        return _back(uid, f"Not recorded: {exc}")
    return _back(uid, f"Recorded: {label.replace('_', ' ')} {verdict}.")


async def agreement_page(
    ctx: WebContext, request: Request, user: auth.Principal, form: Any
) -> Response:
    return _page(request, "agreement.html", rows=agreement(ctx.sessions))


async def audit_page(
    ctx: WebContext, request: Request, user: auth.Principal, form: Any
) -> Response:
    filters = _filters(request)
    with ctx.sessions() as session:
        rows = list(audit_export.fetch(session, filters, limit=500))
        report = verify(session)
    _record(
        ctx,
        request,
        Event.AUDIT_LOG_USED,
        user_id=user.name,
        detail=f"console query: {filters.describe()}",
    )
    return _page(request, "audit.html", rows=rows, report=report, q=dict(request.query_params))


async def audit_download(
    ctx: WebContext, request: Request, user: auth.Principal, form: Any
) -> Response:
    fmt = request.path_params["fmt"]
    if fmt not in audit_export.FORMATS:
        return HTMLResponse("Unknown format.", status_code=404)
    filters = _filters(request)
    out = io.StringIO()
    with ctx.sessions() as session:
        audit_export.write_export(fmt, audit_export.fetch(session, filters), out)
    _record(
        ctx,
        request,
        Event.AUDIT_LOG_USED,
        user_id=user.name,
        detail=f"console export {fmt}: {filters.describe()}",
    )
    media = {"csv": "text/csv", "json": "application/json", "xml": "application/xml"}[fmt]
    headers = {"Content-Disposition": f'attachment; filename="audit.{fmt}"'}
    return StreamingResponse(iter([out.getvalue()]), media_type=media, headers=headers)


def _filters(request: Request) -> audit_export.AuditFilter:
    q = request.query_params
    return audit_export.AuditFilter(
        study_instance_uid=q.get("study") or None,
        patient_id=q.get("patient") or None,
        event=q.get("event") or None,
    )


def routes(ctx: WebContext) -> list[Route]:
    """The console's routes (the REST API is mounted beside them at /api/v1)."""
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login(ctx), methods=["POST"]),
        Route("/logout", guarded(ctx, "view", logout), methods=["POST"]),
        Route("/", guarded(ctx, "view", home)),
        Route("/studies", guarded(ctx, "view", study_list)),
        Route("/studies/{uid}", guarded(ctx, "view", study)),
        Route("/objects/{sop}.png", guarded(ctx, "view", object_image)),
        Route("/studies/{uid}/feedback", guarded(ctx, "view", feedback), methods=["POST"]),
        Route("/studies/{uid}/reprocess", guarded(ctx, "act", reprocess), methods=["POST"]),
        Route("/studies/{uid}/retract", guarded(ctx, "act", retract), methods=["POST"]),
        Route("/deliveries/{id:int}/retry", guarded(ctx, "act", retry), methods=["POST"]),
        Route("/agreement", guarded(ctx, "view", agreement_page)),
        Route("/audit", guarded(ctx, "audit", audit_page)),
        Route("/audit/export.{fmt}", guarded(ctx, "audit", audit_download)),
    ]
