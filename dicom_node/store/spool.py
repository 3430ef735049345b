"""The spool: received instances and produced results as files, written atomically and durably
(temporary file, fsync, rename, fsync of the folder). Paths come only from validated UIDs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dicom_node.store.uids import checked_uid


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
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
        write_atomic(path, data)

    def _path(self, area: str, study_instance_uid: str, sop_instance_uid: str) -> Path:
        study = checked_uid(study_instance_uid, "Study Instance UID")
        sop = checked_uid(sop_instance_uid, "SOP Instance UID")
        return self.root / area / study / f"{sop}.dcm"
