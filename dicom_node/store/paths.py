"""Spool paths in the database are relative to the spool root, so that each host mounts the
shared spool where it likes (`spool_dir`): a receiver on one mount path and a worker on
another read the same rows.

The translation sits at the session boundary: a session factory given a root
(`use_spool_root`) stores the `path` of instances, deliveries and result objects relative to
it and hands them out absolute again, under its own root. Rows written before (absolute paths)
are read as they are. Core queries that select a path column resolve it with `absolute`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from dicom_node.store.schema import Delivery, Instance, ResultObject

ROOT = "spool_root"
WITH_PATH = (Instance, Delivery, ResultObject)


def use_spool_root(sessions: sessionmaker[Session], root: Path) -> None:
    """The factory's sessions store spool paths relative to `root` (as configured, not with
    its symbolic links resolved: the paths the node builds start with it)."""
    sessions.configure(info={ROOT: os.path.abspath(root)})


def stored(path: str, root: str | None) -> str:
    """The path as the database keeps it: relative to `root` when it lies under it, else
    absolute (a path relative to the working folder, as a relative `spool_dir` gives, would
    otherwise be read back under the root)."""
    if not root:
        return path
    full = os.path.abspath(path)
    if full.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(full, root)
    return full


def absolute(session: Session, value: str | None) -> str | None:
    """A stored path as this session's process finds it: under its own spool root."""
    root = session.info.get(ROOT)
    if value is None or not root or os.path.isabs(value):
        return value
    return os.path.join(root, value)


@event.listens_for(Session, "before_flush")
def _to_stored(session: Session, _context: Any, _instances: Any) -> None:
    root = session.info.get(ROOT)
    if not root:
        return
    for item in (*session.new, *session.dirty):
        if isinstance(item, WITH_PATH) and item.path:
            item.path = stored(item.path, root)


@event.listens_for(Session, "after_flush_postexec")
def _to_absolute(session: Session, _context: Any) -> None:
    """Objects still in use after the flush see absolute paths again (not marked changed)."""
    if not session.info.get(ROOT):
        return
    for item in list(session.identity_map.values()):
        if isinstance(item, WITH_PATH) and item.path:
            set_committed_value(item, "path", absolute(session, item.path))


def _on_load(target: Any, context: Any) -> None:
    session = getattr(context, "session", None)  # None while `Session.merge` loads a copy
    if session is not None and target.path:
        set_committed_value(target, "path", absolute(session, target.path))


for _cls in WITH_PATH:
    event.listen(_cls, "load", _on_load)
    event.listen(_cls, "refresh", lambda target, context, _attrs: _on_load(target, context))
