"""The REST API's bodies (pydantic): what each route answers and takes, as its OpenAPI schema
documents them."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["agree", "disagree", "missed"]
JobState = Literal["queued", "running", "done", "skipped", "failed", "superseded"]
DeliveryState = Literal["pending", "sent", "committing", "committed", "failed", "dead", "withdrawn"]


class Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Problem(Body):
    """Every error: what went wrong, in words."""

    detail: str


class Code(Body):
    """A coded concept (SNOMED CT, or DCM where SNOMED has none)."""

    value: str
    scheme: str
    meaning: str


class Finding(Body):
    label: str
    code: Code
    probability: float
    threshold: float
    decision: Literal["present", "absent"]


class Model(Body):
    name: str
    version: str
    weights_sha256: str
    synthetic_demo: bool


class Prediction(Body):
    """`gradcam_png`: base64 PNG of the Grad-CAM picture of `heatmap_of` (the findings at or
    above threshold, else the most probable one), drawn as the node's Secondary Captures are."""

    findings: list[Finding]
    model: Model
    heatmap_of: list[str]
    gradcam_png: str


class JobSummary(Body):
    id: int
    study_instance_uid: str
    state: str
    reason: str
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    detail: str | None


class StudySummary(Body):
    study_instance_uid: str
    accession_number: str | None
    state: str
    calling_ae: str
    first_received_at: dt.datetime
    ready_at: dt.datetime | None
    job: JobSummary | None = Field(description="the newest analysis job")
    findings_present: int = Field(description="findings at or above threshold, newest done job")


class InstanceRow(Body):
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_class: str
    calling_ae: str
    received_at: dt.datetime
    purged: bool


class FindingRow(Body):
    label: str
    probability: float
    threshold: float
    present: bool


class ImageResults(Body):
    job_id: int
    sop_instance_uid: str
    findings: list[FindingRow]


class SkipRow(Body):
    job_id: int
    sop_instance_uid: str
    reason: str


class DeliveryRow(Body):
    id: int
    job_id: int
    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    destination: str = Field(description="AE@host:port")
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    updated_at: dt.datetime
    due_at: dt.datetime | None


class FeedbackRow(Body):
    id: int
    sop_instance_uid: str
    label: str
    verdict: str
    job_id: int | None
    user_name: str
    created_at: dt.datetime


class StudyDetail(Body):
    """One study: patient (from its first instance's header), instances, every job with its
    results and skips, deliveries and readers' feedback."""

    study: StudySummary
    patient_name: str | None
    patient_id: str | None
    instances: list[InstanceRow]
    jobs: list[JobSummary]
    results: list[ImageResults]
    skips: list[SkipRow]
    deliveries: list[DeliveryRow]
    feedback: list[FeedbackRow]


class FeedbackIn(Body):
    sop_instance_uid: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=64)
    verdict: Verdict


class Recorded(Body):
    id: int


class Queued(Body):
    job_id: int
