"""`dicom-node feedback export`: the readers' corrected labels as a DICOM folder that
`dicom-node train --data` and `dicom-node evaluate` read (docs/feedback.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the `export` sub-command to `parser`."""
    from dicom_node.cli import add_config

    commands = parser.add_subparsers(dest="feedback_command", required=True)
    export = commands.add_parser(
        "export",
        help="write labels.csv and the images of the judged studies for retraining",
        description="Each analysed image's findings as the model called them, corrected by the "
        "readers' newest verdicts (disagree flips a call, missed adds a finding, agree keeps "
        "it), with copies of the DICOM images. The folder holds patient data.",
    )
    export.add_argument("--out", type=Path, required=True, help="new (or empty) folder to write")
    export.add_argument(
        "--all",
        action="store_true",
        dest="include_all",
        help="also the analysed images nobody judged (the model's calls as labels)",
    )
    add_config(export)
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the export; exit status 0 (1 with a message when it cannot be written)."""
    from dicom_node import audit
    from dicom_node.audit import Event
    from dicom_node.cli.service import settings_of
    from dicom_node.pipeline.feedback import LABELS_CSV, export_labels
    from dicom_node.startup import connect_database

    settings = settings_of(args)
    sessions = connect_database(settings.database_url, settings.spool_dir)
    written = export_labels(sessions, args.out, include_all=args.include_all)
    with sessions.begin() as session:  # who took patient images out of the node, and where
        audit.record(
            session,
            Event.LABELS_EXPORTED,
            detail=f"{written} image(s) with labels written to {args.out.resolve()}",
        )
    print(
        f"wrote {written} image(s) and {LABELS_CSV} to {args.out}: "
        f"dicom-node train --data {args.out} ... reads it"
    )
    return 0
