"""The web console as its users meet it: a real headless Chromium (tests/browser.py) signs in,
finds the study a real Orthanc pushed, reads its findings and Grad-CAM, records a reader's
disagreement and retries a failed delivery; and, over plain HTTP, nothing but the probes,
metrics and the sign-in page answers without signing in, forms need their CSRF token, and
failed sign-ins are throttled and audited."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from pydicom.uid import generate_uid
from sqlalchemy import select
from starlette.routing import Mount, Route

from dicom_node.http.auth import add_user
from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Delivery, Feedback
from dicom_node.testing import node_settings
from tests.browser import Browser
from tests.conftest import chest_image, write_study
from tests.peers import (
    ORTHANC_BIN,
    OrthancServer,
    StoreSCP,
    free_port,
    missing_binaries,
    send_study,
    upload_files,
)
from tests.webviewer import CHROMIUM

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Node]:
    """A receive-only node (no model) with its console: a viewer and an operator."""
    with Node(node_settings(tmp_path, workers=0)) as node:
        add_user(node.sessions, "vera", "viewer", PASSWORD)
        add_user(node.sessions, "otto", "operator", PASSWORD)
        yield node


def _paths(node: Node) -> Iterator[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    assert node.http is not None
    for route in node.http.server.app.routes:
        if isinstance(route, Mount):
            for inner in route.routes:
                assert isinstance(inner, Route)
                for method in sorted(inner.methods or {"GET"}):
                    if method != "HEAD":
                        yield method, route.path + _filled(inner.path)
        elif isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    yield method, _filled(route.path)


def _filled(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(2) == ":int" else "1.2.3", path)


def test_without_signing_in_only_probes_metrics_and_sign_in_answer(receiver: Node) -> None:
    """Every route of the app, walked from its route table: the console's pages redirect to
    /login (303), the REST API answers 401; only /healthz, /readyz, /metrics and /login
    answer without a session."""
    base = f"http://127.0.0.1:{receiver.http_port}"
    walked = 0
    for method, path in _paths(receiver):
        reply = requests.request(method, base + path, allow_redirects=False, timeout=10)
        walked += 1
        if path in {"/healthz", "/readyz", "/metrics"} or (path == "/login" and method == "GET"):
            assert reply.status_code == 200, (method, path)
        elif path == "/login":  # POST without a token
            assert reply.status_code == 403, (method, path)
        elif path.startswith("/api/"):
            assert reply.status_code == 401, (method, path, reply.status_code)
        else:
            assert reply.status_code == 303, (method, path, reply.status_code)
            assert reply.headers["location"] == "/login"
    assert walked >= 20


def _signed_in(node: Node, name: str) -> requests.Session:
    browser = requests.Session()
    base = f"http://127.0.0.1:{node.http_port}"
    page = browser.get(f"{base}/login", timeout=10).text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    reply = browser.post(
        f"{base}/login",
        data={"name": name, "password": PASSWORD, "csrf": token.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert reply.status_code == 303 and reply.headers["location"] == "/"
    return browser


def test_a_form_post_without_the_csrf_token_is_refused(receiver: Node) -> None:
    """Signed in as an operator, a reprocess form posted without (or with a wrong) CSRF token
    gets 403; the session cookie is HttpOnly and SameSite=strict; a viewer may not act."""
    base = f"http://127.0.0.1:{receiver.http_port}"
    operator = _signed_in(receiver, "otto")
    cookie = next(c for c in operator.cookies if c.name == "dicom_node_session")
    assert cookie.has_nonstandard_attr("HttpOnly") or cookie.has_nonstandard_attr("httponly")
    for data in ({"confirm": "yes"}, {"confirm": "yes", "csrf": "forged"}):
        reply = operator.post(f"{base}/studies/1.2.3/reprocess", data=data, timeout=10)
        assert reply.status_code == 403 and "CSRF" in reply.text
    viewer = _signed_in(receiver, "vera")
    page = viewer.get(f"{base}/", timeout=10).text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    denied = viewer.post(
        f"{base}/studies/1.2.3/reprocess", data={"csrf": token.group(1)}, timeout=10
    )
    assert denied.status_code == 403 and "role" in denied.text


def test_failed_sign_ins_are_audited_and_throttled(receiver: Node) -> None:
    """Five wrong passwords for one user from one address are each a failed user_login audit
    row; the sixth attempt is refused even with the right password, and audited too."""
    base = f"http://127.0.0.1:{receiver.http_port}"
    session = requests.Session()
    token = re.search(r'name="csrf" value="([^"]+)"', session.get(f"{base}/login").text)
    assert token
    for password in ["wrong"] * 5 + [PASSWORD]:
        reply = session.post(
            f"{base}/login",
            data={"name": "vera", "password": password, "csrf": token.group(1)},
            allow_redirects=False,
            timeout=10,
        )
        assert reply.status_code == 200  # the sign-in page again, with the reason
    assert "Too many failed sign-ins" in reply.text
    with receiver.sessions() as db:
        logins = db.scalars(select(AuditEvent).where(AuditEvent.event_type == "user_login")).all()
    assert [e.outcome for e in logins] == ["failure"] * 6
    assert all(e.user_id == "vera" for e in logins)


@pytest.mark.skipif(
    bool(missing_binaries(ORTHANC_BIN, CHROMIUM)), reason="Orthanc or Chromium not installed"
)
def test_chromium_signs_in_reads_a_study_orthanc_pushed_records_feedback_and_retries(
    tmp_path: Path,
) -> None:
    """Orthanc pushes a chest study to the node, whose results go to Orthanc and to an archive
    that is down. In headless Chromium an operator signs in, finds the study by its accession
    number, sees its findings with probabilities and thresholds and the Grad-CAM image, marks
    a finding disagreed (stored with the user, audited), starts the archive and retries its
    failed delivery from the study page (sent). Screenshots of the overview and the study page
    are saved (docs/console-*.png when DICOM_NODE_UPDATE_SCREENSHOTS=1)."""
    node_port, archive_port = free_port(), free_port()
    with OrthancServer(
        modalities={"DICOMNODE": ("DICOMNODE", "127.0.0.1", node_port)}, graceful_stop=False
    ) as orthanc:
        destinations = [
            {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
            {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive_port},
        ]
        settings = node_settings(
            tmp_path,
            port=node_port,
            destinations=destinations,
            send_attempts=1,
            retry_initial_seconds=3600,
            retry_max_interval_seconds=3600,
        )
        with Node(settings) as node:
            add_user(node.sessions, "otto", "operator", PASSWORD)
            study_uid = str(generate_uid())
            source = chest_image(study_uid=study_uid, findings=("Cardiomegaly", "Effusion"))
            source.AccessionNumber = "ACC-CONSOLE-1"
            upload_files(orthanc.api, write_study(tmp_path / "study", [source]))
            send_study(orthanc.api, modality="DICOMNODE", study_instance_uid=study_uid)
            wait_finished(node.sessions, study_uid, timeout=60)
            shots = tmp_path / "shots"
            shots.mkdir()
            states = _operator_session(
                f"http://127.0.0.1:{node.http_port}",
                study_uid,
                shots,
                lambda: StoreSCP(tmp_path / "archive", aet="ARCHIVE", port=archive_port),
            )
    assert "failed" not in states and "sent" in states
    with node.sessions() as db:
        feedback = db.scalars(select(Feedback)).all()
        deliveries = db.scalars(select(Delivery)).all()
        kinds = [e.event_type for e in db.scalars(select(AuditEvent)).all()]
    assert [(f.label, f.verdict, f.user_name) for f in feedback] == [
        ("Cardiomegaly", "disagree", "otto")
    ]
    assert {d.state for d in deliveries} == {"sent"}
    assert {"user_login", "study_queried", "study_viewed", "feedback_recorded"} <= set(kinds)
    assert "delivery_retried" in kinds
    for name in ("console-overview.png", "console-study.png"):
        assert (shots / name).stat().st_size > 10_000
        if os.environ.get("DICOM_NODE_UPDATE_SCREENSHOTS") == "1":
            shutil.copy(shots / name, REPO / "docs" / name)


def _operator_session(
    base: str, study_uid: str, shots: Path, archive: Callable[[], StoreSCP]
) -> str:
    """Chromium as the operator: sign in, find the study, read it, disagree with a finding,
    start the archive and retry its deliveries; the deliveries table as it ends."""
    with Browser() as browser:
        browser.open(f"{base}/studies")
        assert browser.url.endswith("/login")
        browser.fill("#name", "otto")
        browser.fill("#password", PASSWORD)
        browser.click("#login button")
        assert "Overview" in browser.text("main")
        browser.screenshot(shots / "console-overview.png")
        browser.open(f"{base}/studies")
        browser.fill("#q", "ACC-CONSOLE-1")
        browser.click("#search button")
        assert study_uid in browser.text("#studies")
        browser.click("a.study")
        page = browser.text("main")
        assert "Cardiomegaly" in page and "threshold" in page
        loaded = browser.evaluate(
            "Array.from(document.querySelectorAll('img.gradcam'))"
            ".filter(i => i.complete && i.naturalWidth > 0).length"
        )
        assert loaded >= 1
        assert "Imaging Measurement Report" in browser.text("#sr")
        browser.click("button.disagree[data-label='Cardiomegaly']")
        assert "Recorded: Cardiomegaly disagree" in browser.text("#message")
        with archive():
            for _ in range(5):  # each retry reloads the page; the archive's failed ones
                if "retry" not in browser.text("#deliveries"):
                    break
                browser.click("button.retry")
            states = browser.text("#deliveries")
        browser.screenshot(shots / "console-study.png")
    return states


def test_the_console_and_api_can_listen_apart_from_the_probes_and_metrics(tmp_path: Path) -> None:
    """With `console_port` set, the probes and metrics answer on `http_port` only, and the
    console and the REST API on `console_port` only (each can be bound to its own interface)."""
    with Node(node_settings(tmp_path, workers=0, console_port=0)) as node:
        probes = f"http://127.0.0.1:{node.http_port}"
        console = f"http://127.0.0.1:{node.console_port}"
        assert node.console_port != node.http_port
        assert requests.get(f"{probes}/readyz", timeout=5).status_code == 200
        assert requests.get(f"{probes}/metrics", timeout=5).status_code == 200
        assert requests.get(f"{probes}/login", timeout=5).status_code == 404
        assert requests.get(f"{probes}/api/v1/studies", timeout=5).status_code == 404
        assert requests.get(f"{console}/login", timeout=5).status_code == 200
        assert requests.get(f"{console}/api/v1/studies", timeout=5).status_code == 401
        assert requests.get(f"{console}/metrics", timeout=5).status_code == 404
