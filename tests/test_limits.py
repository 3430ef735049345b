"""Limits no input can break, against a running node over loopback: idle and dripping sockets,
a PDU claiming 4 GiB, a burst of 200 associations, pixel bombs, malformed values in one image of
two, a full disk, an instance over the size limit, a silent database, a database that is gone
while an association ends, and the leftovers of interrupted spool writes. After each, a good
association is served within 2 s."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    Verification,
)
from sqlalchemy import make_url, select

from dicom_node.log import RepeatFilter
from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import Instance, Skip
from tests.conftest import SettingsFactory, chest_image
from tests.peers import ECHOSCU_BIN, free_port

pytestmark = pytest.mark.integration


def echo_within(port: int, seconds: float = 2.0) -> bool:
    """A C-ECHO association to the node succeeds within `seconds`."""
    ae = AE(ae_title="GOOD")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = seconds
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == 0 and time.monotonic() - started < seconds


def store(port: int, ds: Dataset) -> int:
    """One C-STORE by pynetdicom; the status."""
    return store_all(port, [ds])[0]


def store_all(port: int, datasets: list[Dataset]) -> list[int]:
    """C-STOREs of `datasets` in one association (a study as a modality sends it); statuses."""
    ae = AE(ae_title="PYSCU")
    for syntax in {str(ds.file_meta.TransferSyntaxUID) for ds in datasets}:
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@pytest.fixture
def node(make_settings: SettingsFactory) -> Iterator[Node]:
    """A node with short timeouts and a worker (the demo model)."""
    settings = make_settings(association_timeout_seconds=2.0, database_timeout_seconds=2.0)
    with Node(settings) as running:
        yield running


def test_idle_and_dripping_connections_do_not_stop_a_good_association(node: Node) -> None:
    """20 TCP connections that send nothing and one A-ASSOCIATE-RQ dripped a byte a second:
    a good association is served at once; the node closes them all within the ACSE timeout."""
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(20)]
    drip = socket.create_connection(("127.0.0.1", node.port))
    stop = threading.Event()

    def dripping() -> None:
        for byte in b"\x01\x00\x00\x00\x01\x00\x00\x01" * 10:
            if stop.wait(1.0):
                return
            try:
                drip.send(bytes([byte]))
            except OSError:
                return

    threading.Thread(target=dripping, daemon=True).start()
    try:
        assert echo_within(node.port)
        for sock in [*idle, drip]:
            sock.settimeout(8)
            assert sock.recv(1024) == b"", "the node should have closed this connection"
    finally:
        stop.set()
        for sock in [*idle, drip]:
            sock.close()
    assert echo_within(node.port)


def test_a_pdu_claiming_4_gib_is_not_read(node: Node) -> None:
    """An A-ASSOCIATE-RQ header claiming 4 GiB, then junk: the node closes the connection without
    reading the junk; a good association follows."""
    sock = socket.create_connection(("127.0.0.1", node.port))
    sock.sendall(struct.pack(">BBL", 0x01, 0x00, 0xFFFFFFF0))
    sock.settimeout(5)
    assert sock.recv(1024) == b""
    sent = 0
    with pytest.raises(OSError):  # the peer is gone: the junk cannot be delivered
        for _ in range(4096):
            sent += sock.send(b"\x00" * 65536)
    assert sent < 64 << 20
    sock.close()
    assert echo_within(node.port)


def test_a_burst_of_200_associations_is_served(make_settings: SettingsFactory) -> None:
    """200 DCMTK echoscu processes started at once (senders are other processes, as on a
    network; 200 requestor threads inside the node's own process would share its interpreter
    lock with it) all get their C-ECHO answered, none refused, with the default ACSE timeout."""
    with Node(make_settings(), workers=0) as node:
        args = [str(ECHOSCU_BIN), "-aet", "GOOD", "-aec", "DICOMNODE", "-ta", "60", "-td", "60"]
        senders = [
            subprocess.Popen(
                [*args, "127.0.0.1", str(node.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(200)
        ]
        codes = [sender.wait(timeout=180) for sender in senders]
        assert codes.count(0) == 200, f"{200 - codes.count(0)} of 200 not served"
        assert echo_within(node.port)


def _bomb(study_uid: str, syntax: str, fragment: bytes, rows: int, columns: int) -> Dataset:
    ds = chest_image(study_uid=study_uid, size=(64, 64))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _rle_bomb(study_uid: str) -> Dataset:
    header = struct.pack("<16L", 1, 64, *([0] * 14))  # one segment at offset 64
    return _bomb(study_uid, RLELossless, header + b"\x81\x00" * 68, 60000, 60000)


def _j2k_bomb(study_uid: str) -> Dataset:
    sizes = (41, 0, 50000, 50000, 0, 0, 50000, 50000, 0, 0)  # Lsiz Rsiz Xsiz Ysiz ...
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIII", *sizes)
    return _bomb(study_uid, JPEG2000Lossless, (siz + b"\x00" * 60)[:60], 512, 512)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_rle_bomb, "declares 60000 x 60000 pixels"),
        (_j2k_bomb, "compressed pixel data declares 50000 x 50000"),
    ],
    ids=["rle-60000-square-in-200-bytes", "jpeg2000-60-bytes-claiming-50000-square"],
)
def test_pixel_bombs_are_not_decoded_and_the_study_gets_its_sr(
    node: Node, make: object, reason: str
) -> None:
    """A dataset whose header or codestream declares a huge image is stored, not decoded; the
    study's job ends skipped with the reason (and its SR); the node keeps serving."""
    study_uid = str(generate_uid())
    assert store(node.port, make(study_uid)) == 0x0000  # type: ignore[operator]
    job = wait_finished(node.sessions, study_uid, timeout=60)
    assert job.state == "skipped" and reason in (job.detail or ""), job.detail
    assert echo_within(node.port)


def test_a_malformed_image_costs_itself_only(node: Node) -> None:
    """In a two-image study, one image with NumberOfFrames 'abc' and another with an empty
    Samples per Pixel are skipped with their reasons; the good image is analysed."""
    study_uid = str(generate_uid())
    good = chest_image(study_uid=study_uid, seed=1)
    frames = chest_image(study_uid=study_uid, seed=2)
    frames.add_new("NumberOfFrames", "IS", None)
    frames["NumberOfFrames"]._value = ["abc"]
    samples = chest_image(study_uid=study_uid, seed=3)
    samples.add_new("SamplesPerPixel", "US", None)
    # one association: a study sent in three would be three studies to a quiet-period timer
    assert store_all(node.port, [good, frames, samples]) == [0x0000] * 3
    job = wait_finished(node.sessions, study_uid, timeout=60)
    assert job.state == "done", job.detail
    with node.sessions() as session:
        rows = session.scalars(select(Skip).where(Skip.job_id == job.id)).all()
        skips = {row.sop_instance_uid: row.reason for row in rows}
    assert set(skips) == {str(frames.SOPInstanceUID), str(samples.SOPInstanceUID)}
    assert "NumberOfFrames" in skips[str(frames.SOPInstanceUID)]


def test_disk_below_the_watermark_gets_a700(make_settings: SettingsFactory) -> None:
    """With less free disk than min_free_disk_bytes, C-STORE answers 0xA700 and stores nothing."""
    settings = make_settings(min_free_disk_bytes=1 << 60)
    with Node(settings, workers=0) as node:
        assert store(node.port, chest_image(study_uid=str(generate_uid()))) == 0xA700
        with node.sessions() as session:
            assert session.scalars(select(Instance)).all() == []
        assert echo_within(node.port)


def test_an_instance_over_the_size_limit_gets_a700(make_settings: SettingsFactory) -> None:
    """An instance larger than max_instance_bytes is refused with 0xA700."""
    settings = make_settings(max_instance_bytes=1 << 20)
    with Node(settings, workers=0) as node:
        big = chest_image(study_uid=str(generate_uid()), size=(1024, 1024))  # 2 MB of pixels
        assert store(node.port, big) == 0xA700


def test_a_silent_database_answers_a700_in_seconds(make_settings: SettingsFactory) -> None:
    """Another process holds the SQLite database's write lock: a C-STORE gets 0xA700 within
    seconds (each database write it tries gives up after the database timeout, 1 s here), and
    a C-ECHO is still answered."""
    settings = make_settings(database_timeout_seconds=1.0)
    with Node(settings, workers=0) as node:
        database = settings.database_url.removeprefix("sqlite:///")
        blocker = sqlite3.connect(database, timeout=1, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            status = store(node.port, chest_image(study_uid=str(generate_uid())))
            elapsed = time.monotonic() - started
            assert status == 0xA700 and elapsed < 10
            assert echo_within(node.port, seconds=5)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


class SilentProxy:
    """A TCP relay on a free loopback port to `target`; `silence()` stops relaying in both
    directions while keeping every connection open (a network partition: no reset, no answer),
    `speak()` resumes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> None:
        self._open.clear()

    def speak(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                sink.close()
                return
            self._open.wait()
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()


@pytest.mark.postgres
def test_a_silent_postgres_network_answers_a700_in_seconds(
    make_settings: SettingsFactory, postgres_url: str
) -> None:
    """PostgreSQL behind a network that goes silent (packets dropped, no reset): a C-STORE gets
    0xA700 within 10 s and a C-ECHO is still answered; once the network is back, a C-STORE is
    stored again."""
    url = make_url(postgres_url)
    proxy = SilentProxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings(database_url=through, database_timeout_seconds=2.0)
    try:
        with Node(settings, workers=0) as node:
            assert store(node.port, chest_image(study_uid=str(generate_uid()), seed=1)) == 0
            proxy.silence()
            started = time.monotonic()
            status = store(node.port, chest_image(study_uid=str(generate_uid()), seed=2))
            elapsed = time.monotonic() - started
            assert status == 0xA700 and elapsed < 10, (hex(status), elapsed)
            assert echo_within(node.port, seconds=5)
            proxy.speak()
            time.sleep(0.5)
            assert store(node.port, chest_image(study_uid=str(generate_uid()), seed=3)) == 0
    finally:
        proxy.speak()
        proxy.close()


def test_a_release_the_database_missed_is_made_once_it_is_back(node: Node) -> None:
    """The database loses the studies table while an association ends; once it is back, the
    release is recorded and the study analysed, without a restart."""
    study_uid = str(generate_uid())
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert int(assoc.send_c_store(chest_image(study_uid=study_uid)).Status) == 0
    database = node.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE studies RENAME TO studies_away")
    assoc.release()
    time.sleep(1.0)
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE studies_away RENAME TO studies")
    job = wait_finished(node.sessions, study_uid, timeout=60)
    assert job.state == "done", job.detail


def test_interrupted_spool_writes_are_swept_at_start(make_settings: SettingsFactory) -> None:
    """Temporary files of writes a crash interrupted (older than an hour) are removed when the
    node starts; a fresh one (another process's write in flight) is left alone."""
    settings = make_settings()
    folder = settings.spool_dir / "instances" / "1.2.3"
    folder.mkdir(parents=True)
    old, fresh = folder / ".incoming-old.tmp", folder / ".incoming-new.tmp"
    old.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with Node(settings, workers=0):
        assert not old.exists() and fresh.exists()


def test_repeated_log_lines_are_held_back_and_counted() -> None:
    """The same message within the window is suppressed; the next one after it says how many."""
    repeat = RepeatFilter(window=0.2)

    def record() -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, "f", 1, "db down: %s", ("e",), None)

    assert repeat.filter(record())
    assert not any(repeat.filter(record()) for _ in range(50))
    time.sleep(0.25)
    last = record()
    assert repeat.filter(last) and "50 more like it" in str(last.msg)
