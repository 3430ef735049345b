"""DICOM TLS and the peer registry against real peers: DCMTK's TLS tools (storescu, echoscu and
storescp with `+tls`) and Orthanc's DICOM TLS, both ways; refusals of an untrusted client
certificate, of plain TCP on the TLS port, of TLS 1.1, of an unknown calling AE title, of a
calling AE from a wrong address and of a plain association from a peer that must use TLS,
each audited; the peer certificate's subject recorded."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.peers import (
    OrthancServer,
    StoreSCP,
    free_port,
    send_study,
    upload_files,
    wait_for_study_instances,
)
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(pki: Pki, **overrides: object) -> dict[str, object]:
    """The node's TLS listener on a free port, its certificate, the test CA."""
    return {
        "tls_port": 0,
        "tls_cert_file": pki.node.cert,
        "tls_key_file": pki.node.key,
        "tls_ca_file": pki.ca,
        **overrides,
    }


@pytest.fixture
def tls_node(make_settings: SettingsFactory, pki: Pki) -> Iterator[Node]:
    with Node(
        make_settings(**tls_settings(pki), association_timeout_seconds=3.0), workers=0
    ) as node:
        yield node


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"/usr/bin/{tool}", *args], capture_output=True, text=True, timeout=60, check=False
    )


def tls_args(pair: object, ca: Path) -> list[str]:
    return ["+tls", str(pair.key), str(pair.cert), "+cf", str(ca)]  # type: ignore[attr-defined]


def refusals(node: Node) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        with node.sessions() as session:
            rows = session.scalars(
                select(AuditEvent.detail).where(AuditEvent.event_type == "association_rejected")
            ).all()
        if rows or time.monotonic() > deadline:
            return [row or "" for row in rows]
        time.sleep(0.1)


def test_dcmtk_storescu_over_tls_is_stored_and_the_subject_audited(
    tls_node: Node, pki: Pki, tmp_path: Path
) -> None:
    """DCMTK storescu with a client certificate the CA signed: the instance is stored; the
    acceptance's audit row names the certificate's subject."""
    files = write_study(tmp_path, [chest_image(study_uid=str(generate_uid()))])
    done = dcmtk(
        "storescu",
        *tls_args(pki.client, pki.ca),
        "-aec",
        "DICOMNODE",
        "127.0.0.1",
        str(tls_node.tls_port),
        str(files[0]),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with tls_node.sessions() as session:
        details = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.event_type == "association_accepted")
        ).all()
    assert any("CN=modality" in (d or "") for d in details)


def test_untrusted_client_certificate_is_refused_and_audited(tls_node: Node, pki: Pki) -> None:
    """A client certificate another CA signed: no association; the refusal is audited."""
    done = dcmtk(
        "echoscu",
        *tls_args(pki.rogue_client, pki.ca),
        "-aec",
        "DICOMNODE",
        "127.0.0.1",
        str(tls_node.tls_port),
    )
    assert done.returncode != 0
    assert any("TLS handshake failed" in r for r in refusals(tls_node))


def test_plain_tcp_to_the_tls_port_is_refused_and_audited(tls_node: Node) -> None:
    """A plain DICOM association on the TLS port: refused, audited; the plain port still works."""
    done = dcmtk("echoscu", "-to", "5", "-aec", "DICOMNODE", "127.0.0.1", str(tls_node.tls_port))
    assert done.returncode != 0
    assert any("TLS handshake failed" in r for r in refusals(tls_node))
    assert dcmtk("echoscu", "-aec", "DICOMNODE", "127.0.0.1", str(tls_node.port)).returncode == 0


def test_tls_1_1_is_refused_and_audited(tls_node: Node, pki: Pki) -> None:
    """A client that speaks at most TLS 1.1 cannot connect; the refusal is audited."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    with (
        socket.create_connection(("127.0.0.1", tls_node.tls_port)) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")
    assert any("TLS handshake failed" in r for r in refusals(tls_node))


def test_the_node_delivers_over_tls_to_dcmtk_storescp(
    make_settings: SettingsFactory, pki: Pki, tmp_path: Path
) -> None:
    """A destination with `tls = true`: the SR and SC reach DCMTK storescp over TLS, which
    requires the node's certificate; the node verifies storescp's (host name included)."""
    scp_tls = tls_args(pki.peer, pki.ca)
    with StoreSCP(tmp_path / "pacs", aet="PACS", extra_args=scp_tls, echo_args=scp_tls) as pacs:
        destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "tls": True}
        settings = make_settings(
            destinations=[destination],
            tls_cert_file=pki.node.cert,
            tls_key_file=pki.node.key,
            tls_ca_file=pki.ca,
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid)])
            assert (
                dcmtk(
                    "storescu", "-aec", "DICOMNODE", "127.0.0.1", str(node.port), str(files[0])
                ).returncode
                == 0
            )
            job = wait_finished(node.sessions, study_uid, timeout=60)
            assert job.state == "done" and "2 result object(s) queued" in (job.detail or ""), (
                job.detail
            )
            assert len(pacs.wait_for(2)) == 2


def test_orthanc_dicom_tls_both_ways(
    make_settings: SettingsFactory, pki: Pki, tmp_path: Path
) -> None:
    """Orthanc with DICOM TLS pushes a study to the node's TLS port; the node sends the SR and
    SC back to Orthanc over TLS."""
    node_tls_port = free_port()
    modalities = {
        "DICOMNODE": {
            "AET": "DICOMNODE",
            "Host": "127.0.0.1",
            "Port": node_tls_port,
            "UseDicomTls": True,
        }
    }
    tls = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki.peer.cert),
        "DicomTlsPrivateKey": str(pki.peer.key),
        "DicomTlsTrustedCertificates": str(pki.ca),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomModalities": modalities,
    }
    with OrthancServer(config_overrides=tls, graceful_stop=False) as orthanc:
        destination = {
            "ae_title": orthanc.aet,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "tls": True,
        }
        settings = make_settings(
            **tls_settings(pki, tls_port=node_tls_port), destinations=[destination]
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            upload_files(
                orthanc.api, write_study(tmp_path / "study", [chest_image(study_uid=study_uid)])
            )
            send_study(orthanc.api, modality="DICOMNODE", study_instance_uid=study_uid)
            job = wait_finished(node.sessions, study_uid, timeout=60)
            assert job.state == "done", job.detail
            assert len(wait_for_study_instances(orthanc.api, study_uid, 3, timeout=30)) == 3


@pytest.mark.parametrize(
    ("peers", "calling", "reason"),
    [
        ([{"ae_title": "ORTHANC"}], "INTRUDER", "not a known peer"),
        (
            [{"ae_title": "MODALITY", "addresses": ["10.0.0.0/8"]}],
            "MODALITY",
            "not allowed from 127.0.0.1",
        ),
        ([{"ae_title": "MODALITY", "require_tls": True}], "MODALITY", "must use DICOM TLS"),
    ],
    ids=["unknown-calling-ae", "calling-ae-from-a-wrong-address", "plain-from-a-tls-only-peer"],
)
def test_the_peer_registry_refuses_and_audits(
    make_settings: SettingsFactory, peers: list[dict[str, object]], calling: str, reason: str
) -> None:
    """Each refusal of the peer registry ends the association and is audited with its reason;
    an admitted peer is served."""
    registry = [*peers, {"ae_title": "FRIEND", "addresses": ["127.0.0.1", "localhost"]}]
    with Node(make_settings(peers=registry), workers=0) as node:
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        if assoc.is_established:  # admitted by negotiation, then aborted by the registry
            time.sleep(0.5)
            assert not assoc.is_established or assoc.send_c_echo().get("Status") is None
        assert any(reason in r for r in refusals(node))
        friend = AE(ae_title="FRIEND")
        friend.add_requested_context(Verification)
        ok = friend.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        assert ok.is_established and int(ok.send_c_echo().Status) == 0
        ok.release()
