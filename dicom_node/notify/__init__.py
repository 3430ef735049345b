"""Critical-finding notifications: a signed JSON webhook and an HL7 v2.5.1 ORU^R01 over MLLP,
planned in the job's transaction and sent from an outbox apart from the pipeline (retried,
dead-lettered, audited). Imports `audit`, `store`, `settings`, `metrics`, `errors` and
`structured_reports`; nothing of the pipeline, the network of DICOM or the model."""

from dicom_node.notify.critical import (
    CriticalFinding,
    NotifyError,
    critical_findings,
    critical_thresholds,
)
from dicom_node.notify.hl7 import oru_r01, send_mllp
from dicom_node.notify.outbox import HL7, WEBHOOK, Notifier, plan_notifications
from dicom_node.notify.webhook import post, signature, webhook_body

__all__ = [
    "HL7",
    "WEBHOOK",
    "CriticalFinding",
    "Notifier",
    "NotifyError",
    "critical_findings",
    "critical_thresholds",
    "oru_r01",
    "plan_notifications",
    "post",
    "send_mllp",
    "signature",
    "webhook_body",
]
