"""The `dicom-node` command: serve, work, echo, send, retry, reprocess, demo, train, evaluate,
audit."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.errors import ConfigError, NodeError
from dicom_node.log import configure_logging
from dicom_node.settings import Destination, Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except NodeError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-node", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="receive studies by C-STORE and analyse them")
    _add_config(serve)
    serve.set_defaults(func=cmd_serve)

    work = commands.add_parser("work", help="analyse ready studies (extra worker process)")
    _add_config(work)
    work.set_defaults(func=cmd_work)

    echo = commands.add_parser("echo", help="C-ECHO a DICOM peer")
    _add_peer(echo)
    echo.set_defaults(func=cmd_echo)

    send = commands.add_parser("send", help="C-STORE DICOM files or folders to a peer")
    _add_peer(send)
    send.add_argument("paths", nargs="+", type=Path, help="files or folders (searched recursively)")
    send.set_defaults(func=cmd_send)

    retry = commands.add_parser("retry", help="send failed result deliveries again")
    _add_config(retry)
    retry.set_defaults(func=cmd_retry)

    reprocess = commands.add_parser(
        "reprocess", help="queue a stored study for analysis again (audited)"
    )
    reprocess.add_argument("study_uid", metavar="STUDY_UID", help="Study Instance UID")
    _add_config(reprocess)
    reprocess.set_defaults(func=cmd_reprocess)

    demo = commands.add_parser("demo", help="run the whole loop on a synthetic study")
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

    from dicom_node.audit import cli as audit_cli
    from dicom_node.training import train

    audit_parser = commands.add_parser(
        "audit", help="verify, query, export and purge the audit trail"
    )
    audit_cli.configure_parser(audit_parser)

    train_parser = commands.add_parser("train", help="train a DenseNet121 bundle")
    train.configure_parser(train_parser)
    train_parser.set_defaults(func=train.run)

    from dicom_node.training import evaluate

    evaluate_parser = commands.add_parser("evaluate", help="score a bundle on labelled data")
    evaluate.configure_parser(evaluate_parser)
    evaluate_parser.set_defaults(func=evaluate.run)
    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file (DICOM_NODE_<KEY> variables win)")


def _add_peer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="ANY-SCP", help="called AE title")
    parser.add_argument("--calling", default="DICOMNODE", help="our (calling) AE title")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    return settings


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.node import Node

    with Node(_settings(args)):
        _wait_for_signal()
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    from dicom_node.node import Node

    settings = _settings(args)
    with Node(settings, receive=False, workers=max(1, settings.workers)):
        _wait_for_signal()
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
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
    from dicom_node.dimse.scu import DimseSender

    files = sorted(_dicom_files(args.paths))
    if not files:
        print("send: no files found", file=sys.stderr)
        return 1
    sender = DimseSender(ae_title=args.calling, attempts=1)
    destination = Destination(ae_title=args.aet, host=args.host, port=args.port)
    outcomes = sender.send(destination, files)
    for outcome in outcomes:
        status = "none" if outcome.status is None else f"0x{outcome.status:04X}"
        print(
            f"{outcome.sop_instance_uid}: {'stored' if outcome.ok else 'FAILED'} (status {status})"
        )
    return 0 if all(o.ok for o in outcomes) else 1


def _dicom_files(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        elif path.is_file():
            found.append(path)
    return found


def cmd_retry(args: argparse.Namespace) -> int:
    from dicom_node.node import default_sender, open_database
    from dicom_node.pipeline.deliver import deliver, failed_delivery_ids

    settings = _settings(args)
    sessions = open_database(settings)
    ids = failed_delivery_ids(sessions)
    if not ids:
        print("no failed deliveries")
        return 0
    sent, failed = deliver(sessions, default_sender(settings), ids, model=None)
    print(f"retried {len(ids)} delivery(ies): {sent} sent, {failed} still failed")
    return 0 if failed == 0 else 1


def cmd_reprocess(args: argparse.Namespace) -> int:
    from dicom_node.pipeline.reprocess import request_reprocess
    from dicom_node.store.schema import make_engine, make_session_factory, upgrade_schema

    settings = _settings(args)
    engine = make_engine(settings.database_url)  # no model is loaded: the workers analyse
    upgrade_schema(engine)
    try:
        job_id = request_reprocess(make_session_factory(engine), args.study_uid)
    finally:
        engine.dispose()
    print(
        f"study {args.study_uid}: job {job_id} queued; a worker (serve or work) analyses it and "
        "sends the results again"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dicom_node.synthetic.demo import run_demo

    configure_logging("WARNING")
    return run_demo(args.workdir, seed=args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
