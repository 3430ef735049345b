"""Worker: promotes quiet studies, claims jobs with a lease, runs the pipeline, records the
outcome. The one error boundary of the analysis side."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from dicom_node import audit, metrics
from dicom_node.audit import Event, Outcome
from dicom_node.log import bound
from dicom_node.pipeline.assemble import promote_ready_studies
from dicom_node.pipeline.run import Services, report_failure, run_study
from dicom_node.pipeline.wakeup import Wakeup
from dicom_node.store import jobs
from dicom_node.store.jobs import ClaimedJob

log = logging.getLogger(__name__)

FINISHED_EVENTS = {
    "done": (Event.JOB_FINISHED, Outcome.SUCCESS),
    "skipped": (Event.JOB_SKIPPED, Outcome.SKIPPED),
    "failed": (Event.JOB_FAILED, Outcome.FAILURE),
}


class Worker:
    """Runs jobs one at a time; several workers (threads or processes) may share one database."""

    def __init__(
        self, ctx: Services, name: str | None = None, wakeup: Wakeup | None = None
    ) -> None:
        """`wakeup`: what wakes this worker when a job is queued (the node's); without it the
        worker only polls every `poll_seconds`."""
        self.ctx = ctx
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.wakeup = wakeup or Wakeup()

    def run(self, stop: threading.Event) -> None:
        """Run jobs until `stop` is set (notify the wakeup too, to stop an idle worker at once)."""
        log.info("worker %s started", self.name)
        while not stop.is_set():
            seen = self.wakeup.generation
            try:
                busy = self.run_once()
            except Exception:  # database down and the like: log, back off, keep serving
                log.exception("worker loop error")
                busy = False
            if not busy and not stop.is_set():
                self.wakeup.wait(seen, self.ctx.settings.poll_seconds)
        log.info("worker %s stopped", self.name)

    def run_once(self) -> bool:
        """Promote ready studies and run at most one job; True when a job ran."""
        settings = self.ctx.settings
        promote_ready_studies(self.ctx.sessions, settings.quiet_seconds)
        job = jobs.claim(self.ctx.sessions, self.name, lease_seconds=settings.lease_seconds)
        if job is None:
            return False
        if job.attempt > settings.max_job_attempts:
            self.abandon(job)
        else:
            self.process(job)
        return True

    def abandon(self, job: ClaimedJob) -> None:
        """A job whose every attempt ended without an outcome (its worker died each time): it is
        not analysed again; it fails, and its study gets the SR that says so."""
        with bound(job=job.id, study=job.study_instance_uid):
            detail = f"abandoned after {job.attempt - 1} attempt(s); the worker died each time?"
            self._finish(job, "failed", detail)

    def process(self, job: ClaimedJob) -> None:
        """Run the pipeline on the claimed job, renewing its lease meanwhile; record the end."""
        with bound(job=job.id, study=job.study_instance_uid):
            self._process(job)

    def _process(self, job: ClaimedJob) -> None:
        started = time.perf_counter()
        self._record_start(job)
        done = threading.Event()
        heartbeat = threading.Thread(target=self._renew, args=(job, done), daemon=True)
        heartbeat.start()
        try:
            outcome = run_study(self.ctx, job)
            state, detail = outcome.state, outcome.detail
        except Exception as exc:
            log.exception("job %d failed", job.id)
            state, detail = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
            heartbeat.join()
        self._finish(job, state, detail)
        metrics.JOB_SECONDS.observe(time.perf_counter() - started)

    def _finish(self, job: ClaimedJob, state: str, detail: str) -> None:
        """Record how the job ended; a failure after the last attempt first sends the study's
        "could not be analysed" SR (nothing acknowledged is left unanswered)."""
        retry = state == "failed" and job.attempt < self.ctx.settings.max_job_attempts
        if state == "failed" and not retry:
            detail = self._report_failure(job, detail)
        self._record_end(job, state, detail, retry=retry)
        metrics.JOBS_FINISHED.labels(state="retry" if retry else state).inc()
        if self.ctx.lanes is not None:  # its results are due now
            self.ctx.lanes.wake()
        if state == "failed":
            log.error("job %d failed%s: %s", job.id, " (will retry)" if retry else "", detail)
        else:
            log.info("job %d %s: %s", job.id, state, detail)

    def _report_failure(self, job: ClaimedJob, reason: str) -> str:
        try:
            return report_failure(self.ctx, job, reason).detail
        except Exception:  # the report failed too: the job stays failed, and says so
            log.exception("job %d: the SR saying it failed could not be made or sent", job.id)
            return f"{reason}; no SR could be sent"

    def _renew(self, job: ClaimedJob, done: threading.Event) -> None:
        interval = self.ctx.settings.lease_seconds / 3
        while not done.wait(interval):
            if not jobs.renew(
                self.ctx.sessions, job.id, self.name, self.ctx.settings.lease_seconds
            ):
                log.warning("job %d: lease lost", job.id)
                return

    def _record_start(self, job: ClaimedJob) -> None:
        with self.ctx.sessions.begin() as session:
            audit.record(
                session,
                Event.JOB_STARTED,
                study_instance_uid=job.study_instance_uid,
                job_id=job.id,
                model=self.ctx.model_label,
                detail=f"attempt {job.attempt} by {self.name}",
            )

    def _record_end(self, job: ClaimedJob, state: str, detail: str, *, retry: bool) -> None:
        event, outcome = FINISHED_EVENTS[state]
        with self.ctx.sessions.begin() as session:
            jobs.finish(session, job.id, "queued" if retry else state, detail)
            audit.record(
                session,
                event,
                outcome,
                study_instance_uid=job.study_instance_uid,
                job_id=job.id,
                model=self.ctx.model_label,
                detail=detail + (" (will retry)" if retry else ""),
            )
