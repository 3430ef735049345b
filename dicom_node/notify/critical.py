"""Critical findings: the findings of a study that cross a critical threshold, the thresholds in
force, and the error of a notification that could not be delivered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from dicom_node.errors import ConfigError, NodeError
from structured_reports.codes import FINDING_CODES
from structured_reports.results import StudyResult, critical_hits


class NotifyError(NodeError):
    """A notification the receiver did not take: network error, a non-2xx HTTP answer, an HL7
    ACK other than AA/CA. The message says which, for `last_error` and the audit detail;
    `summary` leaves out what the receiver wrote (an ACK's text may name the patient), for logs.
    The notification is retried at its next due time."""

    def __init__(self, message: str, *, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message


@dataclass(frozen=True, kw_only=True, slots=True)
class CriticalFinding:
    """A finding at or above its critical threshold: what is sent about it (label, coded
    concept, the model's probability, the critical threshold, the image it was read on)."""

    label: str
    code_value: str
    code_scheme: str
    code_meaning: str
    probability: float
    threshold: float
    image_sop_instance_uid: str

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(
                f"critical threshold of {self.label!r} out of (0, 1): {self.threshold}"
            )
        if not self.threshold <= self.probability <= 1.0:
            raise ValueError(
                f"probability {self.probability} of {self.label!r} is not at or above its "
                f"critical threshold {self.threshold}"
            )


def critical_findings(study: StudyResult, critical: Mapping[str, float]) -> list[CriticalFinding]:
    """The findings of the study's analysed images at or above their critical threshold: per
    label, once, on the image with its highest probability; in the model's label order."""
    found = []
    for image, finding in critical_hits(study.images, critical):
        concept = FINDING_CODES[finding.label]
        found.append(
            CriticalFinding(
                label=finding.label,
                code_value=concept.value,
                code_scheme=concept.scheme,
                code_meaning=concept.meaning,
                probability=finding.probability,
                threshold=float(critical[finding.label]),
                image_sop_instance_uid=image.sop_instance_uid,
            )
        )
    return found


def critical_thresholds(
    configured: Mapping[str, float] | None,
    bundle: Mapping[str, float],
    labels: Sequence[str],
) -> Mapping[str, float]:
    """The critical thresholds in force: the setting `critical_findings` when set (an empty table
    turns the bundle's off), else the bundle's. Raises `ConfigError` naming the setting when it
    names a label the model does not predict or a threshold outside (0, 1)."""
    if configured is None:
        return MappingProxyType(dict(bundle))
    unknown = sorted(set(configured) - set(labels))
    if unknown:
        raise ConfigError(
            f"critical_findings names labels the model does not predict: {unknown}; "
            f"its labels (exact spelling): {', '.join(labels)}"
        )
    for label, threshold in configured.items():
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"critical_findings.{label} must lie in (0, 1), got {threshold}")
    return MappingProxyType(dict(configured))
