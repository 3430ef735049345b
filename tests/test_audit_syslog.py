"""Forwarding audit events as RFC 5424 syslog over TLS (RFC 5425 octet counting) to a local TLS
collector with a self-signed certificate made here; a dead or slow collector never blocks or
breaks C-STORE, and overflow drops events with a counter."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node import audit
from dicom_node.audit.participants import MessageContext
from dicom_node.audit.syslog import SyslogForwarder, SyslogTarget
from dicom_node.node import Node
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.peers import free_port, storescu
from tests.tls_certs import make_pki

pytestmark = pytest.mark.integration

CONTEXT = MessageContext(source_id="DICOMNODE", local_ae="DICOMNODE")


class Collector:
    """A TLS syslog receiver on loopback that splits RFC 5425 frames into messages."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.messages: list[bytes] = []
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._server.accept()
            except TimeoutError:
                continue
            with self._context.wrap_socket(raw, server_side=True) as connection:
                connection.settimeout(0.2)
                self._read(connection)

    def _read(self, connection: ssl.SSLSocket) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            while b" " in buffer:
                length, _, rest = buffer.partition(b" ")
                if len(rest) < int(length):
                    break
                self.messages.append(rest[: int(length)])
                buffer = rest[int(length) :]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[Collector, Path]]:
    pki = make_pki(tmp_path / "pki")
    receiver = Collector(pki.peer.cert, pki.peer.key)
    yield receiver, pki.ca
    receiver.close()


def parse(message: bytes) -> tuple[str, ET.Element]:
    """(RFC 5424 header up to the BOM, the audit message XML)."""
    header, bom, body = message.partition(b"\xef\xbb\xbf")
    assert bom, "the MSG part starts with a BOM"
    return header.decode("ascii"), ET.fromstring(body)


def test_c_store_events_reach_the_collector_over_tls(
    collector: tuple[Collector, Path],
    make_settings: SettingsFactory,
    tmp_path: Path,
    study_uid: str,
) -> None:
    """Real storescu traffic: each committed audit row arrives as one verified-TLS, octet-counted
    RFC 5424 message (authpriv, MSGID DICOM+RFC3881) whose payload is the DICOM audit XML."""
    receiver, cert = collector
    files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid, size=(64, 64))])
    target = SyslogTarget(host="localhost", port=receiver.port, ca_file=cert)
    with SyslogForwarder(target, CONTEXT) as forwarder:
        with Node(make_settings(), workers=0) as node:
            assert storescu(files, port=node.port, calling="MODALITY").returncode == 0
        messages = receiver.wait_for(4)
    assert forwarder.dropped == 0 and forwarder.sent == len(messages) == 4
    ids = []
    for message in messages:
        header, xml = parse(message)
        pri_version, _time, _host, app, _pid, msgid, sd_id = header.split(" ")[:7]
        assert (app, msgid) == ("dicom-node", "DICOM+RFC3881")
        assert pri_version == "<85>1"  # authpriv.notice (every outcome here is a success), v1
        assert sd_id == "[audit@32473"
        assert xml.tag == "AuditMessage"
        event_id = xml.find("EventIdentification/EventID")
        assert event_id is not None
        ids.append(event_id.get("csd-code"))
    assert ids == ["110100", "110102", "110104", "110100"]


def test_dead_collector_never_blocks_c_store(
    make_settings: SettingsFactory, tmp_path: Path, study_uid: str
) -> None:
    """Nothing listens at the collector's port: storescu still succeeds at once; the queue
    overflows into the drop counter instead of waiting."""
    files = write_study(
        tmp_path / "in", [chest_image(study_uid=study_uid, seed=s, size=(64, 64)) for s in range(4)]
    )
    target = SyslogTarget(host="127.0.0.1", port=free_port(), timeout=1.0)
    forwarder = SyslogForwarder(target, CONTEXT, queue_size=2, retry_seconds=5.0).start()
    try:
        with Node(make_settings(), workers=0) as node:
            started = time.monotonic()
            assert storescu(files, port=node.port, calling="MODALITY").returncode == 0
            elapsed = time.monotonic() - started
    finally:
        forwarder.close(timeout=0.1)
    assert elapsed < 10
    assert forwarder.sent == 0
    assert forwarder.dropped >= 3  # 7 events (start, begin, 4 instances, stop), room for 2 + 1


def test_submit_never_waits_and_counts_drops() -> None:
    """A full queue answers at once: every event beyond its size is dropped and counted."""
    target = SyslogTarget(host="127.0.0.1", port=free_port())
    forwarder = SyslogForwarder(target, CONTEXT, queue_size=5)  # not started: nothing drains
    record = audit.AuditRecord(
        seq=1,
        occurred_at=dt.datetime.now(dt.UTC),
        event_type="node_start",
        event_id="110100",
        event_action="E",
        outcome="success",
        outcome_code=0,
        calling_ae=None,
        called_ae=None,
        peer_address=None,
        user_id=None,
        process="p",
        patient_id=None,
        study_instance_uid=None,
        sop_instance_uid=None,
        sop_class_uid=None,
        sop_class_counts=None,
        job_id=None,
        model=None,
        detail=None,
        prev_hash="0" * 64,
        row_hash="1" * 64,
    )
    started = time.monotonic()
    for _ in range(1000):
        forwarder.submit(record)
    assert time.monotonic() - started < 1.0
    assert (forwarder.pending, forwarder.dropped) == (5, 995)
