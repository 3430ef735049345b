"""The REST API (/api/v1) of a real node over HTTP: every route behind a principal and its role,
predictions of uploads equal to the DICOM path's, upload limits, readers' feedback, and a failed
delivery sent again once its destination is up."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi.routing import APIRoute
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.http import auth
from dicom_node.http.api import make_api
from dicom_node.http.api import predict as predict_route
from dicom_node.http.context import WebContext
from dicom_node.model.preprocess import render_for_display
from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Feedback, Job, Result
from dicom_node.testing import node_settings
from tests.conftest import chest_image, write_study
from tests.peers import StoreSCP, free_port, storescu

pytestmark = pytest.mark.integration


@dataclass(frozen=True, kw_only=True)
class Site:
    node: Node
    base: str
    viewer: dict[str, str]
    operator: dict[str, str]
    study_uid: str
    image: Path  # the radiograph the node analysed
    job: Job
    pacs_port: int  # the destination: down until a test starts it


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One node with the demo model and a destination that is down; one study analysed."""
    root = tmp_path_factory.mktemp("node")
    pacs_port = free_port()
    settings = node_settings(
        root,
        destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
        send_attempts=1,
        retry_initial_seconds=3600,  # the lanes leave the failed delivery to the test
        retry_max_interval_seconds=3600,
    )
    with Node(settings) as node:
        for name, role in (("vic", "viewer"), ("olga", "operator")):
            auth.add_user(node.sessions, name, role, "correct horse battery")
        tokens = {name: auth.make_token(node.sessions, name) for name in ("vic", "olga")}
        study_uid = str(generate_uid())
        [image] = write_study(root / "study", [chest_image(study_uid=study_uid)])
        assert storescu([image], port=node.port).returncode == 0
        job = wait_finished(node.sessions, study_uid, timeout=60)
        yield Site(
            node=node,
            base=f"http://127.0.0.1:{node.http_port}/api/v1",
            viewer={"Authorization": f"Bearer {tokens['vic']}"},
            operator={"Authorization": f"Bearer {tokens['olga']}"},
            study_uid=study_uid,
            image=image,
            job=job,
            pacs_port=pacs_port,
        )


def _routes(site: Site) -> list[tuple[str, str, list[str]]]:
    """(method, path with example parameters, permissions) of every route of the API's route
    table (make_api's app.routes): the routes its schema lists, and the schema."""
    node = site.node
    assert node.services is not None
    ctx = WebContext(settings=node.settings, sessions=node.sessions, sender=node.services.sender)
    routes = [r for r in make_api(ctx).routes if isinstance(r, APIRoute)]
    schema = requests.get(site.base + "/openapi.json", headers=site.viewer, timeout=10).json()
    listed = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert listed | {("GET", "/openapi.json")} == {(m, r.path) for r in routes for m in r.methods}
    found = []
    for route in routes:
        path = route.path.format(uid=site.study_uid, delivery_id=1)
        needs = [d.call.__name__ for d in route.dependant.dependencies if d.call]
        found += [(method, path, needs) for method in sorted(route.methods)]
    return found


def _audit(site: Site, event: str) -> list[AuditEvent]:
    with site.node.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_type == event)))


def test_every_route_needs_a_principal_and_its_permission(site: Site) -> None:
    """Without a token (or with a wrong one) every route answers 401 with a message; a viewer
    gets 403 from the routes that act; the schema is at /api/v1/openapi.json, behind a
    principal like the rest, naming the prefix it is mounted at."""
    routes = _routes(site)
    assert len(routes) >= 8
    bad = {"Authorization": "Bearer not-a-token"}
    for method, path, _ in routes:
        for headers in ({}, bad):
            answer = requests.request(method, site.base + path, headers=headers, timeout=10)
            assert answer.status_code == 401, (method, path)
            assert answer.json()["detail"] and answer.headers["WWW-Authenticate"] == "Bearer"
    acting = [(m, p) for m, p, needs in routes if "require_act" in needs]
    assert {p.rsplit("/", 1)[-1] for _, p in acting} == {"retry", "reprocess"}
    for method, path in acting:
        answer = requests.request(method, site.base + path, headers=site.viewer, timeout=10)
        assert answer.status_code == 403 and "viewer" in answer.json()["detail"]
    schema = requests.get(site.base + "/openapi.json", headers=site.viewer, timeout=10).json()
    assert schema["info"]["title"] == "dicom-node" and "/predict" in schema["paths"]
    assert schema["servers"] == [{"url": "/api/v1"}]


def _png_of_rendering(path: Path) -> bytes:
    """The radiograph as the node renders it (render_for_display, [0, 1]) in a 16-bit PNG:
    load_image_file reads it back within 1/131070 of the rendering."""
    shown = render_for_display(dcmread(path))
    buffer = io.BytesIO()
    Image.fromarray(np.rint(shown * 65535.0).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _predict(site: Site, data: bytes, name: str) -> requests.Response:
    files = {"file": (name, data)}
    return requests.post(site.base + "/predict", headers=site.viewer, files=files, timeout=60)


def test_predictions_of_png_and_dicom_uploads_equal_the_dicom_path(site: Site) -> None:
    """A PNG of the pixels the node renders from the analysed DICOM, and that DICOM itself,
    get the probabilities the node recorded for it (within 1e-4), coded findings, a Grad-CAM
    PNG, and an audit row naming the user."""
    with site.node.sessions() as session:
        stored = {
            r.label: r
            for r in session.scalars(select(Result).where(Result.job_id == site.job.id)).all()
        }
    assert stored
    for data, name in ((_png_of_rendering(site.image), "x.png"), (site.image.read_bytes(), "x")):
        answer = _predict(site, data, name)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        got = {f["label"]: f for f in body["findings"]}
        assert set(got) == set(stored)
        for label, row in stored.items():
            assert abs(got[label]["probability"] - row.probability) < 1e-4
            assert got[label]["decision"] == ("present" if row.present else "absent")
            assert got[label]["code"]["scheme"] and got[label]["code"]["meaning"]
        expected = [label for label, row in stored.items() if row.present]
        assert body["heatmap_of"] == (expected or body["heatmap_of"]) and body["heatmap_of"]
        picture = Image.open(io.BytesIO(base64.b64decode(body["gradcam_png"])))
        assert picture.format == "PNG" and picture.mode == "RGB"
        assert (
            body["model"]["synthetic_demo"] is True and len(body["model"]["weights_sha256"]) == 64
        )
    rows = [r for r in _audit(site, "study_viewed") if (r.detail or "").startswith("predict")]
    assert len(rows) == 2 and {r.user_id for r in rows} == {"vic"}
    assert rows[1].patient_id == "TEST-PID-4711"  # the DICOM upload's patient


def test_uploads_too_large_or_unreadable_are_refused_with_a_message(
    site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """413 by Content-Length before the body is read and by the size read; 422 for a file that
    is no image, a corrupt PNG, a CT and a lateral view (the reasons the node would skip)."""
    token = site.viewer["Authorization"]
    with socket.create_connection(("127.0.0.1", site.node.http_port), timeout=10) as conn:
        conn.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: node\r\nAuthorization: "
            + token.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + b"Content-Length: 100000000\r\n\r\n"
        )
        reply = http.client.HTTPResponse(conn)
        reply.begin()
        assert reply.status == 413 and "64 MiB" in json.loads(reply.read())["detail"]
    monkeypatch.setattr(predict_route, "MAX_UPLOAD_BYTES", 1 << 20)
    answer = _predict(site, b"\0" * ((1 << 20) + 1000), "big.png")
    assert answer.status_code == 413 and "1 MiB" in answer.json()["detail"]
    monkeypatch.undo()
    answer = _predict(site, b"hello, not an image", "notes.txt")
    assert answer.status_code == 422 and "PNG, JPEG or DICOM" in answer.json()["detail"]
    broken = _png_of_rendering(site.image)[:2000]
    answer = _predict(site, broken, "broken.png")
    assert answer.status_code == 422 and "broken.png" in answer.json()["detail"]
    uid = str(generate_uid())
    ct, lateral = write_study(
        tmp_path, [chest_image(study_uid=uid), chest_image(study_uid=uid, view_position="LL")]
    )
    ds = dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct)
    answer = _predict(site, ct.read_bytes(), "ct.dcm")
    assert answer.status_code == 422 and "modality CT" in answer.json()["detail"]
    answer = _predict(site, lateral.read_bytes(), "lateral.dcm")
    assert answer.status_code == 422 and "view position LL" in answer.json()["detail"]


def test_predict_needs_a_model_in_the_process(tmp_path: Path) -> None:
    """A receive-only process (no workers, no model) answers 503."""
    with Node(node_settings(tmp_path), workers=0) as node:
        auth.add_user(node.sessions, "vic", "viewer", "correct horse battery")
        headers = {"Authorization": f"Bearer {auth.make_token(node.sessions, 'vic')}"}
        url = f"http://127.0.0.1:{node.http_port}/api/v1/predict"
        answer = requests.post(url, headers=headers, files={"file": ("x", b"x")}, timeout=10)
    assert answer.status_code == 503 and "model" in answer.json()["detail"]


def test_studies_are_listed_found_and_shown_and_feedback_is_recorded(site: Site) -> None:
    """The list and the search (UID or accession), the study with its patient, results and
    deliveries, and a verdict stored and audited with the user; wrong ones 422."""
    studies = requests.get(site.base + "/studies", headers=site.viewer, timeout=10).json()
    assert studies[0]["study_instance_uid"] == site.study_uid
    assert studies[0]["job"]["state"] == "done" and studies[0]["accession_number"] == "PH0001"
    for q in (site.study_uid, "PH0001"):
        found = requests.get(site.base + "/studies", params={"q": q}, headers=site.viewer).json()
        assert [s["study_instance_uid"] for s in found] == [site.study_uid]
    assert "PH0001" in (_audit(site, "study_queried")[-1].detail or "")
    url = f"{site.base}/studies/{site.study_uid}"
    study = requests.get(url, headers=site.viewer, timeout=10).json()
    assert study["patient_name"] == "Testperson^Secret" and study["instances"][0]["calling_ae"]
    [image] = study["results"]
    assert image["job_id"] == site.job.id and len(image["findings"]) == 14
    assert {d["state"] for d in study["deliveries"]} == {"failed"}
    verdict = {"sop_instance_uid": image["sop_instance_uid"], "label": "Mass", "verdict": "missed"}
    answer = requests.post(url + "/feedback", json=verdict, headers=site.viewer, timeout=10)
    assert answer.status_code == 201, answer.text
    with site.node.sessions() as session:
        row = session.get_one(Feedback, answer.json()["id"])
        assert (row.user_name, row.job_id, row.verdict) == ("vic", site.job.id, "missed")
    [audited] = _audit(site, "feedback_recorded")
    assert audited.user_id == "vic" and audited.detail == "Mass: missed"
    for wrong in ({"label": "Fracture"}, {"verdict": "maybe"}, {"sop_instance_uid": "1.2.3"}):
        answer = requests.post(
            url + "/feedback", json=verdict | wrong, headers=site.viewer, timeout=10
        )
        assert answer.status_code == 422 and answer.json()["detail"]
    assert requests.get(url + ".9", headers=site.viewer, timeout=10).status_code == 404


def test_a_failed_delivery_is_sent_again_once_its_destination_is_up(
    site: Site, tmp_path: Path
) -> None:
    """The delivery that failed while the destination was down turns sent on retry, audited
    with the operator; a second retry is refused (409); reprocessing is queued and audited."""
    failed = requests.get(
        site.base + "/deliveries", params={"state": "failed"}, headers=site.viewer, timeout=10
    ).json()
    assert failed and failed[0]["last_error"]
    with StoreSCP(tmp_path / "pacs", aet="PACS", port=site.pacs_port) as pacs:
        for delivery in failed:
            url = f"{site.base}/deliveries/{delivery['id']}/retry"
            answer = requests.post(url, headers=site.operator, timeout=60)
            assert answer.status_code == 200 and answer.json()["state"] == "sent", answer.text
        assert len(pacs.wait_for(len(failed))) == len(failed)
        again = requests.post(url, headers=site.operator, timeout=10)
        assert again.status_code == 409 and "sent" in again.json()["detail"]
        retried = _audit(site, "delivery_retried")
        assert len(retried) == len(failed) and {r.user_id for r in retried} == {"olga"}
        url = f"{site.base}/studies/{site.study_uid}/reprocess"
        answer = requests.post(url, headers=site.operator, timeout=10)
        assert answer.status_code == 202
        job = wait_finished(site.node.sessions, site.study_uid, after=site.job.id, timeout=60)
    assert job.id == answer.json()["job_id"] and job.state == "done"
    assert _audit(site, "study_reprocess")[-1].user_id == "olga"


def test_a_signed_in_session_is_a_principal_whose_posts_need_the_csrf_token(site: Site) -> None:
    """The console's session cookie reaches the API; its POSTs need the session's CSRF token
    in X-CSRF-Token (403 without it, or with another)."""
    origin = site.base.removesuffix("/api/v1")
    browser = requests.Session()
    form = re.search(r'name="csrf" value="([^"]+)"', browser.get(f"{origin}/login").text)
    assert form
    login = {"name": "vic", "password": "correct horse battery", "csrf": form.group(1)}
    assert browser.post(f"{origin}/login", data=login, allow_redirects=False).status_code == 303
    assert browser.get(site.base + "/studies", timeout=10).status_code == 200
    page = re.search(r'name="csrf" value="([^"]+)"', browser.get(f"{origin}/", timeout=10).text)
    assert page
    with site.node.sessions() as session:
        sop = session.scalars(select(Result.sop_instance_uid)).first()
    url = f"{site.base}/studies/{site.study_uid}/feedback"
    verdict = {"sop_instance_uid": sop, "label": "Mass", "verdict": "agree"}
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        answer = browser.post(url, json=verdict, headers=headers, timeout=10)
        assert answer.status_code == 403 and "X-CSRF-Token" in answer.json()["detail"]
    answer = browser.post(url, json=verdict, headers={"X-CSRF-Token": page.group(1)}, timeout=10)
    assert answer.status_code == 201
