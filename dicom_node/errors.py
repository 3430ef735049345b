"""The node's error tree; each error knows the DIMSE status or outcome it maps to.

NodeError
├── ConfigError            invalid settings; names the key and its source  (exit status 2)
├── StartupError           a dependency of the node is unusable: database, spool, model,
│                          device, port; says what to do                   (exit status 2)
├── StoreError             a C-STORE the node cannot accept                (DIMSE status)
│   ├── OutOfResources     disk or database failure: 0xA700, sender retries
│   └── CannotUnderstand   unreadable dataset or invalid UIDs: 0xC2xx
└── AuditChainError        the audit chain cannot be extended or verified  (audit/chain.py)

As ValueError subclasses: PreprocessError (below: pixels the model cannot read or may not
decode; the image is skipped with its reason) and BundleError (model/bundle.py, an invalid model
bundle: start-up refused). Images the model must not read (pipeline/selection.py) and results a
destination refused (pipeline/deliver.py) are outcomes recorded with their reason, not
exceptions.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """A setting is missing or invalid. The message names the key."""


class StartupError(NodeError):
    """The node cannot start: something it depends on is unusable. The message names the cause
    and what to do, in one line."""


class StoreError(NodeError):
    """A C-STORE request the node cannot accept; `status` is the DIMSE status to return."""

    status: int = 0xC000

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class OutOfResources(StoreError):
    """The node could not store durably (disk full, database down): 0xA700, try again later."""

    status = 0xA700


class CannotUnderstand(StoreError):
    """The dataset cannot be read or its identifying UIDs are missing or invalid.

    0xC210: the dataset cannot be parsed; 0xC221: a required UID is missing or invalid;
    0xC222: the dataset's SOP Instance UID differs from the request's.
    """

    status = 0xC210


INVALID_UID = 0xC221
UID_MISMATCH = 0xC222
SOP_CLASS_MISMATCH = 0xA900


class PreprocessError(ValueError):
    """An image the node cannot analyse; `reason` says why in words fit for a skipped-image note."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
