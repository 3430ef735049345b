"""Spool and UID checks: no unchecked UID becomes a path; writes are atomic."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.errors import CannotUnderstand
from dicom_node.store.spool import Spool, write_atomic
from dicom_node.store.uids import is_valid_uid


@pytest.mark.parametrize(
    "uid",
    ["1.2.3", "2.25.123456789012345678901234567890", "1.2.840.10008.5.1.4.1.1.1"],
)
def test_valid_uids_are_accepted(uid: str) -> None:
    """Digits and dots without leading zeros, up to 64 characters, are UIDs."""
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    ["", "../../etc/passwd", "1.2.03", "1..2", "1.2.", "1.2.3/4", "1." + "1" * 64, "abc", None],
)
def test_invalid_uids_are_refused(uid: str | None) -> None:
    """Path tricks, leading zeros, empty components and over-long values are not UIDs."""
    assert not is_valid_uid(uid)


def test_spool_refuses_a_uid_that_would_escape(tmp_path: Path) -> None:
    """A traversal attempt raises CannotUnderstand (0xC221) before any path is built."""
    spool = Spool(tmp_path)
    with pytest.raises(CannotUnderstand) as caught:
        spool.instance_path("1.2.3", "../../x")
    assert caught.value.status == 0xC221


def test_write_atomic_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    """The file holds the last content written and no temporary file remains."""
    target = tmp_path / "a" / "b.dcm"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["b.dcm"]
