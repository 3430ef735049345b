"""The audit vocabulary of DICOM PS3.15 Annex A.5 (IHE ATNA): which standard event, action and
outcome each node event is, and the coded values the audit message XML uses.

The mapping is data, in one table (`DICOM_EVENTS`); `docs/audit.md` shows it to readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["C", "R", "U", "D", "E"]
Direction = Literal["inbound", "outbound", "local", "security", "audit"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Code:
    """A coded value (PS3.15 A.5.1 CodedValueType): csd-code, codeSystemName, originalText."""

    value: str
    scheme: str
    meaning: str


def dcm(value: str, meaning: str) -> Code:
    return Code(value=value, scheme="DCM", meaning=meaning)


def rfc3881(value: str, meaning: str) -> Code:
    return Code(value=value, scheme="RFC-3881", meaning=meaning)


# Audit Event IDs (CID 400)
APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
AUDIT_LOG_USED = dcm("110101", "Audit Log Used")
BEGIN_TRANSFERRING = dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = dcm("110105", "DICOM Study Deleted")
EXPORT = dcm("110106", "Export")
QUERY = dcm("110112", "Query")
SECURITY_ALERT = dcm("110113", "Security Alert")
USER_AUTHENTICATION = dcm("110114", "User Authentication")

# Audit Event Type Codes (CID 401, CID 403)
APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
LOGIN = dcm("110122", "Login")
LOGOUT = dcm("110123", "Logout")

# Active participant roles (CID 402)
ROLE_APPLICATION = dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = dcm("110151", "Application Launcher")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")
ROLE_SOURCE = dcm("110153", "Source Role ID")

# Participant object ID types
PATIENT_NUMBER = rfc3881("2", "Patient Number")
URI = rfc3881("12", "URI")
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
NODE_ID = dcm("110182", "Node ID")

# Audit source type: application server process tier (PS3.15 A.5.1.2.1)
APPLICATION_SERVER = "4"

# The node's own event names travel as EventTypeCode in this local coding scheme.
LOCAL_SCHEME = "99DCMNODE"

# EventOutcomeIndicator values (PS3.15 A.5.1): success, minor, serious, major failure.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12


@dataclass(frozen=True, kw_only=True, slots=True)
class DicomEvent:
    """How one node event is reported: event ID, action, optional standard event type code,
    the outcome code of a failure, and which way data moved (chooses the participant roles)."""

    event_id: Code
    action: Action
    direction: Direction
    type_code: Code | None = None
    failure_code: int = SERIOUS_FAILURE


DICOM_EVENTS: dict[str, DicomEvent] = {
    "node_start": DicomEvent(
        event_id=APPLICATION_ACTIVITY, action="E", direction="local", type_code=APPLICATION_START
    ),
    "node_stop": DicomEvent(
        event_id=APPLICATION_ACTIVITY, action="E", direction="local", type_code=APPLICATION_STOP
    ),
    "association_accepted": DicomEvent(
        event_id=BEGIN_TRANSFERRING, action="E", direction="inbound"
    ),
    # a refused association or unknown calling AE: mitigation worked, hence a minor failure
    "association_rejected": DicomEvent(
        event_id=SECURITY_ALERT,
        action="E",
        direction="security",
        type_code=NODE_AUTHENTICATION,
        failure_code=MINOR_FAILURE,
    ),
    "instance_received": DicomEvent(
        event_id=INSTANCES_TRANSFERRED, action="C", direction="inbound"
    ),
    "instance_rejected": DicomEvent(
        event_id=INSTANCES_TRANSFERRED, action="C", direction="inbound"
    ),
    "study_ready": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    "job_started": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    "job_finished": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    "job_failed": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    "job_skipped": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    "image_skipped": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    # a person asked for a stored study to be read again (`dicom-node reprocess`)
    "study_reprocess": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    # a person withdrew the study's results (`dicom-node retract`): an IOCM rejection note
    "results_retracted": DicomEvent(event_id=INSTANCES_ACCESSED, action="D", direction="local"),
    # received instances removed from the spool by the retention policy (rows and audit kept)
    "instances_purged": DicomEvent(event_id=STUDY_DELETED, action="D", direction="local"),
    # the sender does not know whether the receiver held copies: "R" (PS3.15 A.5.3.4)
    "result_sent": DicomEvent(event_id=INSTANCES_TRANSFERRED, action="R", direction="outbound"),
    "result_failed": DicomEvent(event_id=INSTANCES_TRANSFERRED, action="R", direction="outbound"),
    # the destination's N-EVENT-REPORT: it commits to keeping the result (or does not: failure)
    "result_committed": DicomEvent(
        event_id=INSTANCES_TRANSFERRED, action="R", direction="outbound"
    ),
    # retries ended without the destination storing it: a major failure, alerted
    "result_dead_lettered": DicomEvent(
        event_id=INSTANCES_TRANSFERRED, action="R", direction="outbound", failure_code=MAJOR_FAILURE
    ),
    # a critical finding's notification (webhook, HL7 ORU^R01) carries the study's identifiers
    # out of the node: DICOM "Export" (PS3.15 A.5.3.6)
    "notification_sent": DicomEvent(event_id=EXPORT, action="R", direction="outbound"),
    "notification_failed": DicomEvent(event_id=EXPORT, action="R", direction="outbound"),
    # the console and the REST API (docs/console.md): the signed-in user is the active participant
    "user_login": DicomEvent(
        event_id=USER_AUTHENTICATION, action="E", direction="local", type_code=LOGIN
    ),
    "user_logout": DicomEvent(
        event_id=USER_AUTHENTICATION, action="E", direction="local", type_code=LOGOUT
    ),
    "study_viewed": DicomEvent(event_id=INSTANCES_ACCESSED, action="R", direction="local"),
    "study_queried": DicomEvent(event_id=QUERY, action="E", direction="local"),
    "feedback_recorded": DicomEvent(event_id=INSTANCES_ACCESSED, action="U", direction="local"),
    # `dicom-node feedback export`: copies of patient images and labels leave the node
    "labels_exported": DicomEvent(event_id=EXPORT, action="R", direction="local"),
    "delivery_retried": DicomEvent(event_id=BEGIN_TRANSFERRING, action="E", direction="local"),
    "audit_log_used": DicomEvent(event_id=AUDIT_LOG_USED, action="R", direction="audit"),
    "audit_log_purged": DicomEvent(event_id=AUDIT_LOG_USED, action="D", direction="audit"),
}


def describe(event_type: str, outcome: str) -> tuple[str, Action, int]:
    """(EventID code, EventActionCode, EventOutcomeIndicator) of a node event and outcome.

    A duplicate instance is a transfer the receiver already held: action "R" (PS3.15 A.5.3.4).
    Skips are designed outcomes, not failures: success, with the reason as description.
    """
    spec = DICOM_EVENTS[event_type]
    action: Action = "R" if outcome == "duplicate" and spec.action == "C" else spec.action
    code = spec.failure_code if outcome == "failure" else SUCCESS
    return spec.event_id.value, action, code


EVENT_IDS: dict[str, Code] = {
    code.value: code
    for code in (
        APPLICATION_ACTIVITY,
        AUDIT_LOG_USED,
        BEGIN_TRANSFERRING,
        INSTANCES_ACCESSED,
        INSTANCES_TRANSFERRED,
        EXPORT,
        QUERY,
        SECURITY_ALERT,
        USER_AUTHENTICATION,
        STUDY_DELETED,
    )
}
