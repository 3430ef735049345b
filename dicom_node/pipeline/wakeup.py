"""Readiness without polling: a study is promoted when its quiet period ends (a timer in the
receiving process, set when an association releases it), and idle workers are woken at once,
in the same process by a condition variable, in other processes by PostgreSQL LISTEN/NOTIFY.
Polling (`poll_seconds`) stays as the safety net: for work processes on SQLite, and for
studies whose timer a restart lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.pipeline.assemble import promote_ready_studies
from dicom_node.store.jobs import CHANNEL

log = logging.getLogger(__name__)

TIMER_MARGIN_SECONDS = 0.005  # the quiet period is compared with stored times: fire just after


class Wakeup:
    """Wakes idle workers when a job may be claimable. A generation counter makes a wake-up
    between a worker's look at the queue and its wait impossible to lose."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        with self._condition:
            return self._generation

    def notify(self) -> None:
        """A job may be claimable (or the node stops): wake every waiting worker."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Return when a wake-up came after generation `seen`, or after `timeout` seconds."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout=timeout)


class QuietTimers:
    """Promotes released studies when their quiet period ends, in the receiving process, and
    wakes the workers; one timer per release (a timer that finds the study not yet quiet, a
    later instance having arrived, does nothing: that instance's release sets another)."""

    def __init__(
        self, sessions: sessionmaker[Session], quiet_seconds: float, wakeup: Wakeup
    ) -> None:
        self.sessions = sessions
        self.quiet_seconds = quiet_seconds
        self.wakeup = wakeup
        self._lock = threading.Lock()
        self._timers: set[threading.Timer] = set()
        self._closed = False

    def released(self, studies: Iterable[str]) -> None:
        """An association holding `studies` ended: promote them once they have been quiet."""
        if not studies:
            return
        with self._lock:
            if self._closed:
                return
            timer = threading.Timer(self.quiet_seconds + TIMER_MARGIN_SECONDS, self._fire)
            timer.args = (timer,)
            timer.daemon = True
            timer.name = "quiet-timer"
            self._timers.add(timer)
        timer.start()

    def _fire(self, timer: threading.Timer) -> None:
        with self._lock:
            self._timers.discard(timer)
        try:
            promoted = promote_ready_studies(self.sessions, self.quiet_seconds)
        except Exception:  # the database is away: the workers' polling promotes it later
            log.warning("quiet timer: studies could not be promoted now", exc_info=True)
            return
        if promoted:
            self.wakeup.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()


class NotificationListener:
    """A thread that LISTENs on PostgreSQL for queued jobs and wakes this process's workers;
    reconnects after a failure. Nothing to do (not started) on other databases."""

    def __init__(self, database_url: str, wakeup: Wakeup, stop: threading.Event) -> None:
        self.database_url = database_url
        self.wakeup = wakeup
        self.stop = stop
        self._thread = threading.Thread(target=self._run, name="job-notifications", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database is away: retry, the workers poll meanwhile
                log.warning("job notifications unavailable (%s); retrying", type(exc).__name__)
                self.stop.wait(5.0)

    def _listen(self) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo

        from dicom_node.store.database import POSTGRES_CONNECT_ARGS, libpq_url

        conninfo = make_conninfo(libpq_url(self.database_url), **POSTGRES_CONNECT_ARGS)
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self.wakeup.notify()  # jobs queued while not listening
            while not self.stop.is_set():
                for _ in connection.notifies(timeout=1.0, stop_after=1):
                    self.wakeup.notify()
