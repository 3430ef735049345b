"""The jobs and deliveries, and sending a failed delivery again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import select

from dicom_node.audit import Event, Outcome
from dicom_node.http.api.deps import context, record, require
from dicom_node.http.api.models import DeliveryRow, DeliveryState, JobState, JobSummary
from dicom_node.http.api.queries import deliveries, delivery_row, jobs
from dicom_node.http.auth import Principal
from dicom_node.pipeline.deliver import deliver, restart_window
from dicom_node.pipeline.dispatch import schedule_of
from dicom_node.store.schema import Delivery, Job, utcnow

router = APIRouter(tags=["operations"])
Viewer = Annotated[Principal, Depends(require("view"))]
Operator = Annotated[Principal, Depends(require("act"))]
Limit = Annotated[int, Query(ge=1, le=1000)]
RETRYABLE = ("failed", "dead", "pending")
ACTIVE_JOB = ("queued", "running")


@router.get("/jobs")
def list_jobs(
    request: Request, principal: Viewer, state: JobState | None = None, limit: Limit = 100
) -> list[JobSummary]:
    """The newest jobs first, of one state when given."""
    with context(request).sessions() as session:
        return jobs(session, state, limit)


@router.get("/deliveries")
def list_deliveries(
    request: Request, principal: Viewer, state: DeliveryState | None = None, limit: Limit = 100
) -> list[DeliveryRow]:
    """The newest deliveries first, of one state when given."""
    with context(request).sessions() as session:
        return deliveries(session, state=state, limit=limit)


@router.post(
    "/deliveries/{delivery_id}/retry",
    responses={404: {"description": "no such delivery"}, 409: {"description": "not now"}},
)
def retry_delivery(delivery_id: int, request: Request, principal: Operator) -> DeliveryRow:
    """Send a failed (or dead-lettered, or left pending) delivery again now, its retry window
    restarted; the delivery as it is afterwards (sent, or failed with the error)."""
    ctx = context(request)
    with ctx.sessions() as session:
        row = session.get(Delivery, delivery_id)
        if row is None:
            raise HTTPException(404, f"no delivery {delivery_id}")
        job_state = session.scalar(select(Job.state).where(Job.id == row.job_id))
        _check_retryable(row, job_state)
    restart_window(ctx.sessions, [delivery_id])
    sent, _ = deliver(
        ctx.sessions,
        ctx.sender,
        [delivery_id],
        model=ctx.services.model_label if ctx.services is not None else None,
        destinations=ctx.settings.destinations,
        schedule=schedule_of(ctx.settings),
    )
    with ctx.sessions() as session:
        after = delivery_row(session.get_one(Delivery, delivery_id))
    record(
        request,
        Event.DELIVERY_RETRIED,
        principal,
        Outcome.SUCCESS if sent else Outcome.FAILURE,
        study_instance_uid=after.study_instance_uid,
        sop_instance_uid=after.sop_instance_uid,
        sop_class_uid=after.sop_class_uid,
        job_id=after.job_id,
        detail=f"API retry of delivery {delivery_id} to {after.destination}: {after.state}",
    )
    return after


def _check_retryable(row: Delivery, job_state: str | None) -> None:
    """409 unless the delivery failed, was dead-lettered or was left pending by a job that has
    ended, and no delivery lane is sending it right now."""
    if row.state not in RETRYABLE or (row.state == "pending" and job_state in ACTIVE_JOB):
        raise HTTPException(409, f"delivery {row.id} is {row.state}: only failed ones are retried")
    if row.lease_expires_at is not None and row.lease_expires_at > utcnow():
        raise HTTPException(409, f"delivery {row.id} is being sent right now by {row.lease_owner}")
