"""What the console and the REST API of one process work with, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.dimse.scu import Sender
from dicom_node.http.auth import Throttle
from dicom_node.pipeline.run import Services
from dicom_node.settings import Settings


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class WebContext:
    """`services`: the model and its batcher in processes with workers (None in a receive-only
    process: predictions answer 503 there)."""

    settings: Settings
    sessions: sessionmaker[Session]
    sender: Sender  # towards the destinations: retries and retractions from the console
    services: Services | None = None
    throttle: Throttle = field(default_factory=Throttle)
