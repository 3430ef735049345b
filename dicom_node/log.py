"""Application logging through structlog: one line per event, as text or JSON, carrying the
context bound for the current association, study or job, and never patient data.

The node's modules log with the standard library (`logging.getLogger(__name__)`); structlog's
`ProcessorFormatter` renders those records and every third-party record alike. Context is bound
once per unit of work with `bind(...)` (association threads bind the association, workers the
job and study) and travels on every line of that thread until `unbind`. Patient identifiers
belong to the audit table: `drop_patient_data` removes any key that names them and redacts the
values of patient-module elements (group 0010) in dataset dumps, whoever logs them.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars
from structlog.typing import EventDict, WrappedLogger

LogFormat = Literal["text", "json"]

PATIENT_KEYS = re.compile(r"patient|birth", re.IGNORECASE)
# A dataset dump line of the patient module: "(0010,0010) Patient's Name  PN: 'Doe^John'".
PATIENT_ELEMENT = re.compile(r"(\(0010,[0-9A-Fa-f]{4}\)[^\n:=]*[:=]?)[^\n]*")
PATIENT_WORDS = re.compile(
    r"((?:Patient(?:'s)?\s?(?:Name|ID|Birth\s?Date)|PatientName|PatientID|PatientBirthDate)"
    r"\s*[:=]\s*)('[^']*'|\"[^\"]*\"|\[[^\]]*\]|\S+)",
    re.IGNORECASE,
)
REDACTED = "<redacted>"
QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def drop_patient_data(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: no patient names, IDs or birth dates leave in a log line. Library
    warnings quote the values they object to (highdicom: `The string "Doe" is unlikely to
    represent the intended person name`), so every quoted value of a warning is redacted."""
    for key in [k for k in event_dict if PATIENT_KEYS.search(k)]:
        del event_dict[key]
    warning = event_dict.get("logger") == "py.warnings"
    for key, value in event_dict.items():
        if isinstance(value, str) and warning and key == "event":
            event_dict[key] = QUOTED.sub(REDACTED, _redact(value))
        elif isinstance(value, str) and ("0010," in value or "atient" in value):
            event_dict[key] = _redact(value)
    return event_dict


def _redact(text: str) -> str:
    text = PATIENT_ELEMENT.sub(lambda m: m.group(1) + " " + REDACTED, text)
    return PATIENT_WORDS.sub(lambda m: m.group(1) + REDACTED, text)


def _renderer(fmt: LogFormat) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer(sort_keys=True)
    return structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)


class RepeatFilter(logging.Filter):
    """The same message (logger, level, format string) at most once per `window` seconds; the
    next one after the window says how many were held back. A database outage must not write
    hundreds of identical lines a second."""

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            since, held = self._seen.get(key, (0.0, 0))
            if now - since < self.window:
                self._seen[key] = (since, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.window:g} s)"
        return True


class _NodeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The node's own stderr handler (other handlers, such as pytest's, are left alone)."""


def node_formatter(fmt: LogFormat = "text") -> logging.Formatter:
    """structlog's rendering of any standard-library record: bound context, level, logger, UTC
    time, then the patient-data filter, as text or JSON."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            drop_patient_data,
            _renderer(fmt),
        ],
    )


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send every log record to stderr through structlog, as `fmt`, the node's at `level`."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _NodeHandler)]:
        root.removeHandler(old)
    handler = _NodeHandler(sys.stderr)
    handler.setFormatter(node_formatter(fmt))
    handler.addFilter(RepeatFilter())
    root.addHandler(handler)
    # Third-party loggers print at INFO what a hospital's log need not hold (highdicom: seven
    # lines a job; pynetdicom: dataset summaries with patient names): they stay at WARNING.
    root.setLevel(logging.WARNING)
    logging.getLogger("dicom_node").setLevel(level)
    logging.captureWarnings(True)


@contextmanager
def bound(**context: object) -> Iterator[None]:
    """Carry `context` (e.g. `job=12, study=uid`) on every log line of this thread inside."""
    tokens = bind_contextvars(**context)
    try:
        yield
    finally:
        reset_contextvars(**tokens)


def bind(**context: object) -> None:
    """Bind `context` for the rest of this thread (an association's thread ends with it)."""
    bind_contextvars(**context)
