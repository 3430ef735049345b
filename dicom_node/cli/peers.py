"""`dicom-node echo` and `dicom-node send`: C-ECHO and C-STORE towards any DICOM peer (no model,
no database, no torch)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.settings import Destination


def configure_peer(parser: argparse.ArgumentParser) -> None:
    """The peer's address and the AE titles of both ends."""
    parser.add_argument("--host", default="127.0.0.1", help="the peer's host name or address")
    parser.add_argument("--port", type=int, required=True, help="the peer's DICOM port")
    parser.add_argument("--aet", default="ANY-SCP", help="called AE title (the peer's)")
    parser.add_argument("--calling", default="DICOMNODE", help="calling AE title (ours)")


def configure_send(parser: argparse.ArgumentParser) -> None:
    """The peer, and the files to send."""
    configure_peer(parser)
    parser.add_argument(
        "paths", nargs="+", type=Path, help="files or folders (searched recursively)"
    )


def cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO the peer; exit status 0 when it answers success."""
    ae = AE(ae_title=args.calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.aet)
    if not assoc.is_established:
        print(f"C-ECHO: no association with {args.aet}@{args.host}:{args.port}", file=sys.stderr)
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = int(status.Status) if "Status" in status else -1
    print(f"C-ECHO {args.aet}@{args.host}:{args.port}: status 0x{code:04X}")
    return 0 if code == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    """C-STORE every DICOM file found; other files are skipped with a warning. Prints each
    instance's outcome, and each failure's status and reason; exit status 0 when all stored."""
    from dicom_node.dimse.scu import DimseSender

    files = sorted(dicom_files(args.paths))
    if not files:
        print("send: no DICOM files found", file=sys.stderr)
        return 1
    sender = DimseSender(ae_title=args.calling, attempts=1)
    destination = Destination(ae_title=args.aet, host=args.host, port=args.port)
    outcomes = sender.send(destination, files)
    for outcome in outcomes:
        status = "none" if outcome.status is None else f"0x{outcome.status:04X}"
        line = (
            f"{outcome.sop_instance_uid}: {'stored' if outcome.ok else 'FAILED'} (status {status})"
        )
        print(line if outcome.ok else f"{line}: {outcome.error}")
    failed = sum(not o.ok for o in outcomes)
    if failed:
        print(f"send: {failed} of {len(outcomes)} instance(s) not stored", file=sys.stderr)
    return 0 if not failed else 1


def dicom_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The DICOM files among `paths` (folders searched recursively, hidden files left out);
    each other file is named in a warning on stderr."""
    for path in paths:
        if not path.exists():
            print(f"send: warning: {path} does not exist", file=sys.stderr)
            continue
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        for candidate in candidates:
            if not candidate.is_file() or candidate.name.startswith("."):
                continue
            if _is_dicom(candidate):
                yield candidate
            else:
                print(f"send: warning: skipped {candidate}: not a DICOM file", file=sys.stderr)


def _is_dicom(path: Path) -> bool:
    try:
        dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return False
    return True
