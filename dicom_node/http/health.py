"""Readiness: the checks behind `/readyz`, run by a background thread every few hundred
milliseconds so that a probe answers at once and an outage shows within a second.

Checks: the database answers (a query within `DATABASE_CHECK_SECONDS`), the spool takes a
write, its disk has more than `min_free_disk_bytes` free (the watermark below which C-STORE
answers 0xA700), the model is loaded (processes with workers) and the DICOM listener is up
(processes that receive). None of them writes an audit row.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import metrics

log = logging.getLogger(__name__)
CHECK_EVERY_SECONDS = 0.2
DATABASE_CHECK_SECONDS = 0.5
STALE_SECONDS = 1.0  # a snapshot older than this (the checker is stuck) is not ready


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """One check's outcome: passed, and why not."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    """Every check at one moment (monotonic `taken`)."""

    checks: Mapping[str, Check] = field(default_factory=dict)
    taken: float = 0.0

    @property
    def ready(self) -> bool:
        fresh = time.monotonic() - self.taken <= STALE_SECONDS
        return fresh and bool(self.checks) and all(c.ok for c in self.checks.values())

    def as_json(self) -> dict[str, object]:
        """The `/readyz` body."""
        return {
            "ready": self.ready,
            "checks": {
                name: {"ok": c.ok, **({"detail": c.detail} if c.detail else {})}
                for name, c in self.checks.items()
            },
        }


class DatabaseProbe:
    """`SELECT 1` within a deadline, in a thread of its own: a silent database makes the check
    fail on time, and never more than one probe waits on it."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="readiness-db")
        self._pending: Future[None] | None = None

    def check(self) -> Check:
        if self._pending is None or self._pending.done():
            self._pending = self._executor.submit(self._query)
        try:
            self._pending.result(timeout=DATABASE_CHECK_SECONDS)
        except FutureTimeout:
            return Check(ok=False, detail=f"no answer within {DATABASE_CHECK_SECONDS:g} s")
        except Exception as exc:  # any driver error: not ready, and why
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            return Check(ok=False, detail=(reason[0] if reason else type(exc).__name__)[:200])
        return Check(ok=True)

    def _query(self) -> None:
        with self.sessions() as session:
            session.execute(text("SELECT 1"))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def spool_check(spool_dir: Path) -> Check:
    """The spool folder takes a small write (created and removed; no fsync)."""
    probe = spool_dir / f".ready-{os.getpid()}"
    try:
        probe.write_bytes(b"ready")
        probe.unlink()
    except OSError as exc:
        return Check(ok=False, detail=f"not writable: {exc.strerror or exc}")
    return Check(ok=True)


def disk_check(spool_dir: Path, min_free_bytes: int) -> Check:
    """More than `min_free_bytes` free on the spool's file system (also exported as metrics)."""
    try:
        free = shutil.disk_usage(spool_dir).free
    except OSError as exc:
        return Check(ok=False, detail=f"unavailable: {exc.strerror or exc}")
    metrics.SPOOL_FREE.set(free)
    metrics.SPOOL_MIN_FREE.set(min_free_bytes)
    if free < min_free_bytes:
        return Check(
            ok=False, detail=f"{free} bytes free, below min_free_disk_bytes ({min_free_bytes})"
        )
    return Check(ok=True)


class Readiness:
    """Runs the checks in the background; `snapshot()` is the latest outcome."""

    def __init__(self, checks: Mapping[str, Callable[[], Check]]) -> None:
        self._checks = dict(checks)
        self._snapshot = Snapshot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)

    def start(self) -> Readiness:
        self.refresh()
        self._thread.start()
        return self

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def refresh(self) -> Snapshot:
        """Run every check now."""
        outcomes = {}
        for name, check in self._checks.items():
            try:
                outcomes[name] = check()
            except Exception as exc:  # a check that raises fails, and the others still run
                outcomes[name] = Check(ok=False, detail=f"{type(exc).__name__}: {exc}"[:200])
        snapshot = Snapshot(checks=outcomes, taken=time.monotonic())
        if snapshot.ready != self._snapshot.ready and self._snapshot.checks:
            failing = ", ".join(n for n, c in outcomes.items() if not c.ok) or "none"
            log.warning(
                "readiness: %s (failing: %s)", "ready" if snapshot.ready else "NOT ready", failing
            )
        self._snapshot = snapshot
        metrics.READY.set(1 if snapshot.ready else 0)
        for name, outcome in outcomes.items():
            metrics.READY_CHECK.labels(check=name).set(1 if outcome.ok else 0)
        return snapshot

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY_SECONDS):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
