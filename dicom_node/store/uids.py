"""UID validation: a UID becomes a file name only after it passed these checks (PS3.5 9.1)."""

from __future__ import annotations

import re

from dicom_node.errors import INVALID_UID, CannotUnderstand

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """True for a UID of digits and dots, no leading zeros, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def checked_uid(value: object, what: str) -> str:
    """Return `value` as a UID string or raise CannotUnderstand (0xC221) naming `what`."""
    text = "" if value is None else str(value)
    if not is_valid_uid(text):
        raise CannotUnderstand(f"{what} is missing or not a valid UID", status=INVALID_UID)
    return text
