"""Start-up that fails clearly: the real `dicom-node serve` / `work` commands, each failing cause
giving one line that names it and what to do, exit status 2, no traceback and no "node started"
audit row. Commands that need no model never import torch; every option's default is in --help."""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dicom_node.cli import build_parser
from dicom_node.testing import DEMO_BUNDLE
from tests.peers import free_port

COMMAND = Path(sys.executable).with_name("dicom-node")


def _environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment without DICOM_NODE_ variables, plus a node kept in
    `tmp_path` (receive only unless `workers` is given) and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    values = {
        "port": str(free_port()),
        "database_url": f"sqlite:///{tmp_path / 'node.db'}",
        "spool_dir": str(tmp_path / "spool"),
        "model_bundle": str(DEMO_BUNDLE),
        "device": "cpu",
        "workers": "0",
        **settings,
    }
    return {**env, **{f"DICOM_NODE_{k.upper()}": v for k, v in values.items()}}


def _run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args],
        env=_environment(tmp_path, **settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2, one line on stderr with every word, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in lines[0], lines[0]


def _started_rows(tmp_path: Path) -> int:
    database = tmp_path / "node.db"
    if not database.exists():
        return 0
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "audit_events" not in tables:
            return 0
        query = "SELECT count(*) FROM audit_events WHERE event_type = 'node_start'"
        return int(connection.execute(query).fetchone()[0])


def test_port_already_in_use(tmp_path: Path) -> None:
    """Another listener holds the DICOM port: `serve` says so and names the port."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])
        done = _run(tmp_path, "serve", port=port)
    _assert_refused(done, f"127.0.0.1:{port}", "already in use", "set port")
    assert _started_rows(tmp_path) == 0


def test_database_unreachable(tmp_path: Path) -> None:
    """No server at the URL's address: the message names the URL, the cause and the fix."""
    url = f"postgresql+psycopg://node@127.0.0.1:{free_port()}/dicom_node"
    done = _run(tmp_path, "serve", database_url=url)
    _assert_refused(done, "cannot be used", "127.0.0.1", "check database_url")


def test_database_url_with_an_unsupported_scheme(tmp_path: Path) -> None:
    """`postgres://` (as Heroku and others write it): told the scheme to write instead."""
    done = _run(tmp_path, "serve", database_url="postgres://node@db/dicom_node")
    _assert_refused(done, "database_url", "postgresql+psycopg://", "DICOM_NODE_DATABASE_URL")


def test_password_in_the_database_url_is_not_printed(tmp_path: Path) -> None:
    """A failing URL is shown with its password hidden."""
    url = f"postgresql+psycopg://node:s3cret-pw@127.0.0.1:{free_port()}/dicom_node"
    done = _run(tmp_path, "serve", database_url=url)
    _assert_refused(done, "***")
    assert "s3cret-pw" not in done.stderr


def test_model_bundle_missing(tmp_path: Path) -> None:
    """`work` with a bundle folder that does not exist."""
    done = _run(tmp_path, "work", model_bundle=str(tmp_path / "no-such-bundle"), workers="1")
    _assert_refused(done, "model bundle", "no-such-bundle", "set model_bundle")
    assert _started_rows(tmp_path) == 0


def test_model_bundle_invalid(tmp_path: Path) -> None:
    """A bundle whose metadata.json is not JSON: the file is named."""
    bundle = tmp_path / "broken"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{ not json")
    done = _run(tmp_path, "serve", model_bundle=str(bundle), workers="1")
    _assert_refused(done, "model bundle", "metadata.json", "not valid JSON")
    assert _started_rows(tmp_path) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tmp_path: Path) -> None:
    """`device = "cuda"` on a machine without CUDA."""
    done = _run(tmp_path, "serve", device="cuda", workers="1")
    _assert_refused(done, "CUDA is not available", 'device = "cpu"')
    assert _started_rows(tmp_path) == 0


def test_spool_folder_not_writable(tmp_path: Path) -> None:
    """The spool folder cannot be made (a file stands in its way): told which and what to do."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = _run(tmp_path, "serve", spool_dir=str(blocker / "spool"))
    _assert_refused(done, "spool folder", "not writable", "set spool_dir")
    assert _started_rows(tmp_path) == 0


def test_bad_json_in_the_environment_is_one_line(tmp_path: Path) -> None:
    """A broken JSON list in DICOM_NODE_ALLOWED_CALLING_AETS names the variable."""
    done = _run(tmp_path, "serve", allowed_calling_aets='["ORTHANC", ')
    _assert_refused(done, "allowed_calling_aets", "DICOM_NODE_ALLOWED_CALLING_AETS", "JSON")


def test_serve_without_destinations_warns_once(tmp_path: Path) -> None:
    """`serve` with no destinations starts, and warns once that results go nowhere."""
    env = _environment(tmp_path, workers="1")
    serve = subprocess.Popen(
        [str(COMMAND), "serve"], env=env, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert serve.stderr is not None
        lines = []
        for line in serve.stderr:
            lines.append(line)
            if "results stay in the spool" in line:
                break
    finally:
        serve.terminate()
        rest = serve.communicate(timeout=60)[1]
    assert serve.returncode == 0
    warnings = [line for line in [*lines, *rest.splitlines()] if "no destinations" in line]
    assert len(warnings) == 1
    assert _started_rows(tmp_path) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["echo", "--port", "1"],
        ["send", "--port", "1", "no-such-file.dcm"],
        ["audit", "verify"],
    ],
    ids=lambda a: a[0],
)
def test_commands_that_need_no_model_do_not_import_torch(tmp_path: Path, args: list[str]) -> None:
    """`echo`, `send` and `audit` run without importing torch (fast, and usable on a host
    without the model's stack): python -X importtime lists every module the command imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env["DICOM_NODE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'node.db'}"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dicom_node.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "dicom_node.cli" in imported  # the command ran
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _subparsers(child)
    return found


def test_every_option_shows_its_default_in_help() -> None:
    """Each command's --help states the default of every option that has one."""
    for parser in _subparsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default in (None, argparse.SUPPRESS):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            assert "(default:" in text, f"{parser.prog}: no defaults shown"
            assert f"(default: {default})" in " ".join(parser.format_help().split()) or (
                isinstance(default, list | tuple)
            ), f"{parser.prog} {action.option_strings}: default {default!r} not shown"
