"""The `dicom-node` command: serve, work, echo, send, retry, reprocess, retract, demo, train,
evaluate, audit, feedback. The process level: imports every subpackage, each command loading
only what it needs (`echo`, `send` and `audit` never import torch)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError, NodeError, StartupError

STARTUP_FAILED = 2


class Parser(argparse.ArgumentParser):
    """Every command's `--help` shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; configuration and start-up errors are one line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return STARTUP_FAILED
    except StartupError as exc:
        print(f"dicom-node: cannot start: {exc}", file=sys.stderr)
        return STARTUP_FAILED
    except NodeError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task."""
    from dicom_node.audit import cli as audit_cli
    from dicom_node.cli import bundles, feedback, models, peers, service, users

    parser = Parser(prog="dicom-node", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, configure: Any, run: Any) -> None:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        configure(sub)
        sub.set_defaults(func=run)

    add("serve", "receive studies by C-STORE and analyse them", add_config, service.cmd_serve)
    add("work", "analyse ready studies (extra worker process)", add_config, service.cmd_work)
    add("echo", "C-ECHO a DICOM peer", peers.configure_peer, peers.cmd_echo)
    add("send", "C-STORE DICOM files or folders to a peer", peers.configure_send, peers.cmd_send)
    add("retry", "send failed result deliveries again", add_config, service.cmd_retry)
    add(
        "reprocess",
        "queue a stored study for analysis again (audited)",
        service.configure_reprocess,
        service.cmd_reprocess,
    )
    add(
        "retract",
        "withdraw a study's results from the destinations (IOCM rejection note, audited)",
        service.configure_retract,
        service.cmd_retract,
    )
    add(
        "purge-spool",
        "remove received instances of studies answered long ago (retention, audited)",
        service.configure_purge,
        service.cmd_purge_spool,
    )
    add("demo", "run the whole loop on a synthetic study", service.configure_demo, service.cmd_demo)
    audit = commands.add_parser("audit", help="verify, query, export and purge the audit trail")
    audit_cli.configure_parser(audit)
    user = commands.add_parser("user", help="console and REST API accounts (add, token)")
    users.configure_parser(user)
    add("train", "train a DenseNet121 bundle", models.configure_train, models.run_train)
    add(
        "evaluate",
        "score a bundle on labelled data",
        models.configure_evaluate,
        models.run_evaluate,
    )
    bundle = commands.add_parser(
        "bundle", help="import a published checkpoint as a bundle, or export one (ONNX, Triton)"
    )
    bundles.configure_bundle(bundle)
    feedback.configure_parser(
        commands.add_parser("feedback", help="export the readers' corrected labels for retraining")
    )
    return parser


def add_config(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE` option of the commands that read the node's settings."""
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (DICOM_NODE_<KEY> variables win); without it, the built-in "
        "defaults and the environment",
    )
