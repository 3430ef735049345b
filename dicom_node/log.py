"""Application logging: one line per event, with context (job, study) but never patient data.

Patient identifiers (names, IDs, birth dates) belong to the audit table, not to logs; the node
never passes them to a logger, and pynetdicom's dataset dumps are kept below the log level.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(processName)s/%(threadName)s %(name)s: %(message)s"


class _NodeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The node's own stderr handler (other handlers, such as a test's, are left alone)."""


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _NodeHandler) for h in root.handlers):
        handler = _NodeHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom's INFO/DEBUG output includes dataset summaries with patient names: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
