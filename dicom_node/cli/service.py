"""The node's own commands: `serve`, `work`, `retry`, `reprocess` and `demo`."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from dicom_node.log import configure_logging
from dicom_node.settings import Settings, load_settings


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings `--config` and the environment give, with logging configured from them."""
    settings = load_settings(args.config)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM, installed before start-up so that a signal during it
    still ends in a clean stop."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def wait_for(stop: threading.Event) -> None:
    """Block until `stop` is set. A wait without a timeout may never return: the kernel delivers
    the signal to any of the node's threads, and Python runs its handler only when the main
    thread runs again, which a lock wait without a timeout does not do."""
    while not stop.wait(0.5):
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    """Receive and analyse until SIGINT or SIGTERM."""
    from dicom_node.node import Node

    stop = _stop_on_signal()
    with Node(settings_of(args)):
        wait_for(stop)
    return 0


def cmd_work(args: argparse.Namespace) -> int:
    """Analyse (no receiving) until SIGINT or SIGTERM; at least one worker."""
    from dicom_node.node import Node

    stop = _stop_on_signal()
    settings = settings_of(args)
    with Node(settings, receive=False, workers=max(1, settings.workers)):
        wait_for(stop)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Send the failed result deliveries again; exit status 0 when none is left failed."""
    from dicom_node.pipeline.deliver import deliver, failed_delivery_ids, restart_window
    from dicom_node.pipeline.dispatch import schedule_of
    from dicom_node.startup import connect_database, default_sender

    settings = settings_of(args)
    sessions = connect_database(settings.database_url, settings.spool_dir)
    ids = failed_delivery_ids(sessions)
    if not ids:
        print("no failed deliveries")
        return 0
    restart_window(sessions, ids)  # a dead-lettered delivery gets a whole retry window again
    sender = default_sender(settings)
    sent, failed = deliver(
        sessions,
        sender,
        ids,
        model=None,
        destinations=settings.destinations,
        schedule=schedule_of(settings),
    )
    print(f"retried {len(ids)} delivery(ies): {sent} sent, {failed} still failed")
    return 0 if failed == 0 else 1


def configure_reprocess(parser: argparse.ArgumentParser) -> None:
    """The study and the settings."""
    from dicom_node.cli import add_config

    parser.add_argument("study_uid", metavar="STUDY_UID", help="Study Instance UID")
    add_config(parser)


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Queue the study for a worker (no model is loaded here)."""
    from dicom_node.pipeline.reprocess import request_reprocess
    from dicom_node.startup import connect_database

    settings = settings_of(args)
    job_id = request_reprocess(
        connect_database(settings.database_url, settings.spool_dir), args.study_uid
    )
    print(
        f"study {args.study_uid}: job {job_id} queued; a worker (serve or work) analyses it and "
        "sends the results again"
    )
    return 0


def configure_retract(parser: argparse.ArgumentParser) -> None:
    """The study and the settings."""
    configure_reprocess(parser)


def cmd_retract(args: argparse.Namespace) -> int:
    """Withdraw the study's results: an IOCM rejection note to every destination that got them
    (no model is loaded here); exit status 0 when every note was delivered."""
    from dicom_node.pipeline.retract import retract_study
    from dicom_node.startup import connect_database, default_sender
    from dicom_node.store.spool import Spool

    settings = settings_of(args)
    sessions = connect_database(settings.database_url, settings.spool_dir)
    withdrawn, sent, failed = retract_study(
        sessions,
        Spool(settings.spool_dir),
        default_sender(settings),
        args.study_uid,
        destinations=settings.destinations,
    )
    print(
        f"study {args.study_uid}: {withdrawn} result object(s) withdrawn; rejection note sent "
        f"to {sent} destination(s)" + (f", {failed} failed (dicom-node retry)" if failed else "")
    )
    return 0 if not failed else 1


def configure_purge(parser: argparse.ArgumentParser) -> None:
    """The age and the settings."""
    from dicom_node.cli import add_config

    parser.add_argument(
        "--older-than-days",
        type=float,
        help="days after a study's results (default: the setting spool_retention_days)",
    )
    add_config(parser)


def cmd_purge_spool(args: argparse.Namespace) -> int:
    """Remove received instances of studies answered long enough ago (audited)."""
    from dicom_node.pipeline.retention import purge_received
    from dicom_node.startup import connect_database

    settings = settings_of(args)
    days = args.older_than_days or settings.spool_retention_days
    if days is None:
        print("spool_retention_days is not set and --older-than-days not given: nothing to do")
        return 0
    purged = purge_received(connect_database(settings.database_url, settings.spool_dir), days)
    print(
        f"removed {purged.files} file(s) ({purged.bytes} bytes) of {purged.studies} study(ies) "
        f"answered more than {days:g} days ago"
    )
    return 0


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Where the demo keeps its files, and its phantoms' seed."""
    parser.add_argument(
        "--workdir", type=Path, default=Path("var/demo"), help="folder of the demo (replaced)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic study")


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on a synthetic study."""
    from dicom_node.synthetic.demo import run_demo

    configure_logging("WARNING")
    return run_demo(args.workdir, seed=args.seed)
