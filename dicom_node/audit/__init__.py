"""The audit trail: DICOM PS3.15 events, their hash chain, codes, export, participants, retention,
syslog forwarding and the `dicom-node audit` command. Imports `store` (its tables) and the
top-level leaves (`errors`, `settings`); nothing of the network, the pipeline or the model."""

from dicom_node.audit.events import (
    AuditRecord,
    Event,
    Outcome,
    Peer,
    add_sink,
    current_user,
    record,
    remove_sink,
)

__all__ = [
    "AuditRecord",
    "Event",
    "Outcome",
    "Peer",
    "add_sink",
    "current_user",
    "record",
    "remove_sink",
]
