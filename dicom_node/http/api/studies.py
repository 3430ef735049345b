"""The studies: listed and searched, one study in full, re-analysis and readers' verdicts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from dicom_node.audit import Event
from dicom_node.errors import NodeError
from dicom_node.http.api.deps import context, peer, record, require
from dicom_node.http.api.models import FeedbackIn, Queued, Recorded, StudyDetail, StudySummary
from dicom_node.http.api.queries import recent_studies, study_detail
from dicom_node.http.auth import Principal
from dicom_node.pipeline.feedback import FeedbackError, record_feedback
from dicom_node.pipeline.reprocess import request_reprocess
from dicom_node.store.schema import Study
from dicom_node.store.uids import is_valid_uid

router = APIRouter(tags=["studies"])
Viewer = Annotated[Principal, Depends(require("view"))]
Operator = Annotated[Principal, Depends(require("act"))]


@router.get("/studies")
def list_studies(
    request: Request,
    principal: Viewer,
    q: Annotated[str, Query(max_length=64, description="Study Instance UID or Accession")] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[StudySummary]:
    """Recent studies, newest first, with their state, timings, newest job and the number of
    findings above threshold; `q` finds one by Study Instance UID or Accession Number."""
    with context(request).sessions() as session:
        rows = recent_studies(session, q.strip(), limit)
    record(request, Event.STUDY_QUERIED, principal, detail=f"API studies q={q!r} limit={limit}")
    return rows


@router.get("/studies/{uid}", responses={404: {"description": "not stored here"}})
def get_study(uid: str, request: Request, principal: Viewer) -> StudyDetail:
    """One study: patient, instances, jobs, results per image, skips, deliveries, feedback."""
    with context(request).sessions() as session:
        detail = study_detail(session, uid)
    if detail is None:
        raise HTTPException(404, f"study {uid} is not stored on this node")
    record(request, Event.STUDY_VIEWED, principal, study_instance_uid=uid, detail="API study")
    return detail


@router.post(
    "/studies/{uid}/reprocess",
    status_code=202,
    responses={404: {"description": "not stored here"}, 409: {"description": "cannot now"}},
)
def reprocess_study(uid: str, request: Request, principal: Operator) -> Queued:
    """Queue the study for analysis again (audited as a re-analysis the user asked for)."""
    if not is_valid_uid(uid):
        raise HTTPException(422, f"{uid!r} is not a valid Study Instance UID")
    ctx = context(request)
    with ctx.sessions() as session:
        stored = session.get(Study, uid) is not None
    if not stored:
        raise HTTPException(404, f"study {uid} is not stored on this node")
    try:
        job_id = request_reprocess(ctx.sessions, uid, user_id=principal.name)
    except NodeError as exc:
        raise HTTPException(409, str(exc)) from exc
    return Queued(job_id=job_id)


@router.post(
    "/studies/{uid}/feedback",
    status_code=201,
    responses={404: {"description": "not stored here"}, 422: {"description": "not recorded"}},
)
def add_feedback(uid: str, verdict: FeedbackIn, request: Request, principal: Viewer) -> Recorded:
    """A reader's verdict on one finding of one analysed image of the study's newest analysis:
    agree, disagree (the call is wrong) or missed (a finding the model did not call)."""
    ctx = context(request)
    labels = ctx.services.labels if ctx.services is not None else None
    try:
        with ctx.sessions.begin() as session:
            if session.get(Study, uid) is None:
                raise HTTPException(404, f"study {uid} is not stored on this node")
            feedback_id = record_feedback(
                session,
                study_instance_uid=uid,
                sop_instance_uid=verdict.sop_instance_uid,
                label=verdict.label,
                verdict=verdict.verdict,
                user_name=principal.name,
                labels=labels,
                peer=peer(request),
            )
    except FeedbackError as exc:
        raise HTTPException(422, str(exc)) from exc
    return Recorded(id=feedback_id)
