"""The critical-finding webhook: a JSON body, signed with HMAC-SHA256 over its exact bytes, POSTed
with urllib (standard library) and an explicit timeout. Redirects are not followed: the body goes
to the configured URL or nowhere."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from pydicom import Dataset

from dicom_node.notify.critical import CriticalFinding, NotifyError
from structured_reports.results import StudyResult

EVENT = "critical-finding"
EVENT_HEADER = "X-DicomNode-Event"
SIGNATURE_HEADER = "X-DicomNode-Signature"
USER_AGENT = "dicom-node"
# The probability as the SR stores it (structured_reports.sr.PROBABILITY_DECIMALS).
DECIMALS = 6


def webhook_body(
    *,
    study: StudyResult,
    findings: Sequence[CriticalFinding],
    header: Dataset,
    sr_sop_instance_uid: str,
    now: dt.datetime,
) -> str:
    """The JSON text of the webhook (sorted keys, no spaces): the study and its order, the
    patient ID, the SR that states the result, the critical findings, the model, the time."""
    model = study.model
    document: dict[str, Any] = {
        "event": EVENT,
        "study_instance_uid": study.study_instance_uid,
        "accession_number": str(header.get("AccessionNumber") or ""),
        "patient_id": str(header.get("PatientID") or ""),
        "sr_sop_instance_uid": sr_sop_instance_uid,
        "findings": [_finding(finding) for finding in findings],
        "model": {
            "name": model.name,
            "version": model.version,
            "weights_sha256": model.weights_sha256,
            "device_uid": model.device_uid,
        },
        "synthetic_demo": model.synthetic_demo,
        "time": now.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _finding(finding: CriticalFinding) -> dict[str, Any]:
    return {
        "label": finding.label,
        "code": {
            "value": finding.code_value,
            "scheme": finding.code_scheme,
            "meaning": finding.code_meaning,
        },
        "probability": round(finding.probability, DECIMALS),
        "threshold": finding.threshold,
        "image_sop_instance_uid": finding.image_sop_instance_uid,
    }


def signature(body: bytes, secret: str) -> str:
    """The `X-DicomNode-Signature` value of `body`: "sha256=" and the hex HMAC-SHA256 of the
    exact bytes with the shared secret (UTF-8) as key."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is a failure (HTTPError), not a new address for the signed body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, secret: str, timeout: float) -> int:
    """POST the signed body; return the HTTP status (2xx). Raises `NotifyError` on any other
    answer, a network error or a timeout (the message names the host, never the path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyError(
            f"webhook URL must be http:// or https:// with a host, not {parts.scheme!r}"
        )
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: EVENT,
            SIGNATURE_HEADER: signature(body, secret),
        },
    )
    where = f"webhook {parts.hostname}"
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"{where} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise NotifyError(f"{where} unreachable: {reason}") from None
    if not 200 <= status < 300:
        raise NotifyError(f"{where} answered HTTP {status}")
    return status
