"""The node's Prometheus metrics (prometheus-client), defined in one place; docs/operations.md
describes each with its labels and meaning, and the alert rules in deploy/prometheus use them.

Counters and histograms here are the process's own: every `serve` and `work` process serves
its own `/metrics` on its own `http_port` (Prometheus scrapes each). What is the database's
state (studies, queue age, deliveries by state) is read from the database at scrape time by
`dicom_node.http.collect`, so that every process reports the same shared state.

A leaf module: it imports nothing of the node, so that any stage may count what it does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, Info

PREFIX = "dicom_node"
# Seconds: from a C-STORE of a small instance (milliseconds) to a 1 GB one (tens of seconds).
STORE_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

STAGES = ("decode", "inference", "gradcam", "encode", "send")

CSTORE_REQUESTS = Counter(
    f"{PREFIX}_cstore_requests",
    "C-STORE requests answered, by DIMSE status (0x0000, 0xA700, ...) and SOP class",
    ["status", "sop_class"],
)
CSTORE_BYTES = Counter(
    f"{PREFIX}_cstore_received_bytes", "Bytes of data sets received by C-STORE (any status)"
)
CSTORE_SECONDS = Histogram(
    f"{PREFIX}_cstore_handling_seconds",
    "Time from a C-STORE's data set received to its answer (spool write, fsync, commit)",
    buckets=STORE_BUCKETS,
)
ASSOCIATIONS_OPEN = Gauge(f"{PREFIX}_associations_open", "DICOM associations open now")
ASSOCIATIONS = Counter(
    f"{PREFIX}_associations", "Associations requested, by outcome (accepted, rejected)", ["outcome"]
)
STAGE_SECONDS = Histogram(
    f"{PREFIX}_job_stage_seconds",
    "Time of one study's pipeline stage: decode, inference, gradcam, encode, send",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
JOB_SECONDS = Histogram(
    f"{PREFIX}_job_seconds", "Time of one job, claim to outcome", buckets=STAGE_BUCKETS
)
JOBS_FINISHED = Counter(
    f"{PREFIX}_jobs_finished", "Jobs ended, by state (done, skipped, failed, retry)", ["state"]
)
BATCH_SIZE = Histogram(
    f"{PREFIX}_batch_size",
    "Images per model forward pass (the batcher's batches)",
    buckets=BATCH_BUCKETS,
)
DELIVERIES = Counter(
    f"{PREFIX}_deliveries",
    "Result objects' delivery attempts ended, by destination and outcome (sent, committing, "
    "committed, failed, dead)",
    ["destination", "outcome"],
)
NOTIFICATIONS = Counter(
    f"{PREFIX}_notifications",
    "Critical-finding notifications' attempts ended, by kind (webhook, hl7) and outcome",
    ["kind", "outcome"],
)
AUDIT_EVENTS = Counter(
    f"{PREFIX}_audit_events", "Audit rows committed by this process, by event type", ["event_type"]
)
SYSLOG_DROPPED = Counter(
    f"{PREFIX}_audit_syslog_dropped", "Audit messages dropped because the syslog queue was full"
)
SYSLOG_CONNECTED = Gauge(
    f"{PREFIX}_audit_syslog_connected",
    "1 while the audit record repository (syslog over TLS) is reached, 0 when it cannot be; "
    "absent where no repository is configured",
    ["target"],
)
FINDING_STUDIES = Counter(
    f"{PREFIX}_finding_studies_read",
    "Studies analysed, per finding (the denominator of the positive rate)",
    ["finding"],
)
FINDING_POSITIVE = Counter(
    f"{PREFIX}_finding_studies_positive",
    "Studies with the finding above its threshold on any image (the drift signal)",
    ["finding"],
)
MODEL = Info(f"{PREFIX}_model", "The model bundle this process analyses with")


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Observe the block's time as the job stage `stage` (`dicom_node_job_stage_seconds`)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage=stage).observe(time.perf_counter() - started)


def count_findings(read: Iterable[str], positive: set[str]) -> None:
    """One study analysed: per finding read, one more study, and one more positive when any
    of its images has the finding above threshold (the positive rate the drift alert watches)."""
    for label in read:
        FINDING_STUDIES.labels(finding=label).inc()
        if label in positive:
            FINDING_POSITIVE.labels(finding=label).inc()


def count_store(status: int, sop_class_uid: str | None, size: int, seconds: float) -> None:
    """One C-STORE answered."""
    CSTORE_REQUESTS.labels(status=f"0x{status:04X}", sop_class=sop_class_uid or "unknown").inc()
    CSTORE_BYTES.inc(size)
    CSTORE_SECONDS.observe(seconds)


# Refreshed at each scrape (dicom_node.http.collect): the node's readiness and the shared
# state in the database.
READY = Gauge(f"{PREFIX}_ready", "1 when the process is ready (every check of /readyz passes)")
READY_CHECK = Gauge(
    f"{PREFIX}_ready_check",
    "1 when the readiness check passes: database, spool, disk, model, listener",
    ["check"],
)
STUDIES = Gauge(f"{PREFIX}_studies", "Studies by state (receiving, ready)", ["state"])
JOBS = Gauge(
    f"{PREFIX}_jobs",
    "Jobs by state (queued, running, done, skipped, failed, superseded)",
    ["state"],
)
QUEUE_OLDEST_AGE = Gauge(
    f"{PREFIX}_queue_oldest_age_seconds", "Age of the oldest queued job (0 when none is queued)"
)
DELIVERIES_BY_STATE = Gauge(
    f"{PREFIX}_deliveries_by_state",
    "Result deliveries by state (pending, sent, committing, committed, failed, dead, "
    "withdrawn) and destination",
    ["state", "destination"],
)
NOTIFICATIONS_BY_STATE = Gauge(
    f"{PREFIX}_notifications_by_state",
    "Critical-finding notifications by state (pending, sent, failed, dead)",
    ["state"],
)
SPOOL_FREE = Gauge(f"{PREFIX}_spool_free_bytes", "Free bytes on the spool's file system")
SPOOL_MIN_FREE = Gauge(
    f"{PREFIX}_spool_min_free_bytes",
    "The setting min_free_disk_bytes: below it C-STORE answers 0xA700 and /readyz is unready",
)
AUDIT_CHAIN_OK = Gauge(
    f"{PREFIX}_audit_chain_ok",
    "1 when the last verification of the audit hash chain passed, 0 when it found a break",
)
AUDIT_CHAIN_VERIFIED = Gauge(
    f"{PREFIX}_audit_chain_verified_timestamp_seconds",
    "When the audit chain was last verified (Unix time)",
)
FINDING_EXPECTED_RATE = Gauge(
    f"{PREFIX}_finding_expected_positive_rate",
    "Per finding, the share of studies above threshold expected from the bundle's validation "
    "(sensitivity x prevalence + (1 - specificity) x (1 - prevalence))",
    ["finding"],
)
