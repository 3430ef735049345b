"""The spool: received instances and produced results as files, written atomically and durably
(temporary file, fsync, rename, fsync of the folder). Paths come only from validated UIDs."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dicom_node.store.uids import checked_uid

TEMPORARY_PREFIX = ".incoming-"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    _replace_atomically(path, lambda out: out.write(data))


def copy_atomic(path: Path, source: Path) -> None:
    """Put a copy of the file `source` at `path` so that a crash leaves the old file or the new
    one (copied in chunks of 1 MiB, never held whole in memory)."""
    with source.open("rb") as src:
        _replace_atomically(path, lambda out: shutil.copyfileobj(src, out, 1 << 20))


def move_atomic(path: Path, source: Path) -> None:
    """Move the file `source` to `path` durably: its data fsynced, renamed onto `path`, the
    folder fsynced; no byte is copied. Across file systems (where a rename cannot be) a copy
    (`copy_atomic`), the source left in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(source, path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_atomic(path, source)
        return
    _fsync_dir(path.parent)


def _replace_atomically(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """A temporary file beside `path` filled by `fill`, fsynced, renamed onto `path`, and the
    folder fsynced; the temporary file removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Files under one root: `instances/<study>/<sop>.dcm` and `results/<study>/<sop>.dcm`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def instance_path(self, study_instance_uid: str, sop_instance_uid: str) -> Path:
        return self._path("instances", study_instance_uid, sop_instance_uid)

    def result_path(self, study_instance_uid: str, sop_instance_uid: str) -> Path:
        return self._path("results", study_instance_uid, sop_instance_uid)

    def store(self, path: Path, data: bytes) -> None:
        """Write `data` to `path` atomically and durably."""
        write_atomic(path, data)

    @property
    def incoming(self) -> Path:
        """Where files being received are written: on the spool's file system, so that storing
        one is a rename. Files left there by a crash are swept (`sweep_temporary`)."""
        return self.root / "incoming"

    def store_file(self, path: Path, source: Path) -> None:
        """Move the received file `source` to `path`, atomically and durably (a rename where
        `source` is on the spool's file system, else a copy)."""
        move_atomic(path, source)

    def sweep_temporary(self, older_than_seconds: float = 3600.0) -> int:
        """Remove the temporary files of writes a crash interrupted (older than the given age, so
        that another process's write in flight is left alone); return how many."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for tmp in self.root.rglob(f"{TEMPORARY_PREFIX}*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # another process finished or removed it
        return removed

    def _path(self, area: str, study_instance_uid: str, sop_instance_uid: str) -> Path:
        study = checked_uid(study_instance_uid, "Study Instance UID")
        sop = checked_uid(sop_instance_uid, "SOP Instance UID")
        return self.root / area / study / f"{sop}.dcm"
