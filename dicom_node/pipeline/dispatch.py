"""Delivery lanes: each destination has its own lane (a thread) that sends what is due to it,
so that a slow or dead destination delays nobody else's results.

A lane claims its due deliveries with a lease (several processes may run lanes on one
database; a lane that dies loses its lease), sends them in one association and records each
outcome (`deliver`): a failure is due again on the retry schedule, across restarts, since the
schedule is in the database. A job only records its deliveries; its worker wakes the lanes
once the job has recorded its end.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Sequence

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.dimse.scu import Sender
from dicom_node.pipeline.deliver import Address, RetrySchedule, deliver
from dicom_node.settings import Destination, Settings
from dicom_node.store.schema import Delivery, Job, utcnow

log = logging.getLogger(__name__)
CLAIM_AT_ONCE = 64
DISCOVER_SECONDS = 5.0  # how often lanes are sought for destinations no longer configured
IDLE_SECONDS = 1.0  # a lane with nothing due looks again this often (or when woken)
# committing: a commitment report that has not come by its due time means "send it again"
DUE_STATES = ("pending", "failed", "committing")


def schedule_of(settings: Settings) -> RetrySchedule:
    return RetrySchedule(
        initial_seconds=settings.retry_initial_seconds,
        max_interval_seconds=settings.retry_max_interval_seconds,
        window_seconds=settings.retry_window_seconds,
        commitment_timeout_seconds=settings.commitment_timeout_seconds,
    )


def _due(address: Address, now: dt.datetime) -> ColumnElement[bool]:
    ae_title, host, port = address
    return (
        (Delivery.destination_ae == ae_title)
        & (Delivery.destination_host == host)
        & (Delivery.destination_port == port)
        & Delivery.state.in_(DUE_STATES)
        & or_(Delivery.due_at.is_(None), Delivery.due_at <= now)
        & or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at < now)
        # a job's results go once it has recorded its end (a re-run takes up its own rows)
        & Delivery.job_id.not_in(select(Job.id).where(Job.state == "running"))
    )


def claim_due(
    sessions: sessionmaker[Session], address: Address, owner: str, lease_seconds: float
) -> list[int]:
    """Take the lease of up to `CLAIM_AT_ONCE` due deliveries of one destination; their ids."""
    now = utcnow()
    with sessions.begin() as session:
        query = select(Delivery.id).where(_due(address, now)).order_by(Delivery.id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list(session.scalars(query.limit(CLAIM_AT_ONCE)).all())
        if not ids:
            return []
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), _due(address, now))
            .values(lease_owner=owner, lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
        )
        mine = select(Delivery.id).where(Delivery.id.in_(ids), Delivery.lease_owner == owner)
        return list(session.scalars(mine).all())


def renew(
    sessions: sessionmaker[Session], ids: list[int], owner: str, lease_seconds: float
) -> None:
    """Extend the lease of deliveries this lane is sending."""
    with sessions.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.lease_owner == owner)
            .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
        )


def due_addresses(sessions: sessionmaker[Session]) -> set[Address]:
    """Every destination that has deliveries to send (pending or failed)."""
    with sessions() as session:
        rows = session.execute(
            select(Delivery.destination_ae, Delivery.destination_host, Delivery.destination_port)
            .where(Delivery.state.in_(DUE_STATES))
            .distinct()
        ).all()
    return {(ae, host, port) for ae, host, port in rows}


class Lane:
    """The thread that sends one destination's deliveries."""

    def __init__(self, lanes: DeliveryLanes, address: Address) -> None:
        self.lanes = lanes
        self.address = address
        self.woken = threading.Event()
        name = f"lane-{address[0]}@{address[1]}:{address[2]}"
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        stop = self.lanes.stop_event
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the database is down and the like: log, wait, go on
                log.exception("delivery lane %s", self.thread.name)
                busy = False
            if not busy:
                self.woken.wait(IDLE_SECONDS)
                self.woken.clear()

    def run_once(self) -> bool:
        """Send what is due now, renewing the lease meanwhile; True when something was."""
        lanes = self.lanes
        ids = claim_due(lanes.sessions, self.address, lanes.owner, lanes.lease_seconds)
        if not ids:
            return False
        done = threading.Event()
        heartbeat = threading.Thread(target=self._renew, args=(ids, done), daemon=True)
        heartbeat.start()
        try:
            deliver(
                lanes.sessions,
                lanes.sender,
                ids,
                model=lanes.model,
                destinations=lanes.destinations,
                schedule=lanes.schedule,
            )
        finally:
            done.set()
            heartbeat.join()
        return True

    def _renew(self, ids: list[int], done: threading.Event) -> None:
        lanes = self.lanes
        while not done.wait(lanes.lease_seconds / 3):
            try:
                renew(lanes.sessions, ids, lanes.owner, lanes.lease_seconds)
            except Exception:  # the database is away: the outcome is recorded when it is back
                log.warning("delivery lane %s: lease not renewed", self.thread.name)


class DeliveryLanes:
    """A lane per destination: those configured from the start, others (a rejection note to a
    destination no longer configured) as deliveries to them appear."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        sender: Sender,
        settings: Settings,
        *,
        model: str | None,
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.destinations: Sequence[Destination] = settings.destinations
        self.schedule = schedule_of(settings)
        self.model = model
        self.owner = f"{socket.gethostname()}:{os.getpid()}:lanes"
        self.lease_seconds = settings.lease_seconds  # renewed while sending, as a job's
        self.stop_event = threading.Event()
        self._lanes: dict[Address, Lane] = {}
        self._lock = threading.Lock()
        self._discovery = threading.Thread(target=self._discover, name="lanes", daemon=True)

    def start(self) -> DeliveryLanes:
        for d in self.destinations:
            self._lane((d.ae_title, d.host, d.port))
        self._discovery.start()
        return self

    def wake(self) -> None:
        """Deliveries were recorded: every lane looks now (the discovery too)."""
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.woken.set()

    def _lane(self, address: Address) -> Lane:
        with self._lock:
            lane = self._lanes.get(address)
            if lane is None:
                lane = self._lanes[address] = Lane(self, address)
                lane.thread.start()
        return lane

    def _discover(self) -> None:
        while not self.stop_event.wait(DISCOVER_SECONDS):
            try:
                addresses = due_addresses(self.sessions)
            except Exception:
                log.exception("delivery lanes: due destinations not read")
                continue
            for address in addresses - set(self._lanes):
                self._lane(address).woken.set()

    def stop(self) -> None:
        """Stop the lanes; a send in progress finishes first (bounded by its timeouts)."""
        self.stop_event.set()
        self.wake()
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.thread.join(timeout=30)
        if self._discovery.is_alive():
            self._discovery.join(timeout=5)
