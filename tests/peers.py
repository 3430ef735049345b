"""Real DICOM peers for integration tests: Orthanc, DCMTK storescp/storescu/echoscu, over loopback.

Everything here starts real processes on free loopback ports and always stops them again:

* `OrthancServer`: a stock Debian Orthanc (`/usr/sbin/Orthanc`) configured from the repository's
  `orthanc/orthanc.json`, with its REST API wrapped in an `orthanc_api_client.OrthancApiClient`.
* `StoreSCP`: DCMTK `storescp` writing what it receives into a folder; `received()` lists only
  files that storescp has finished writing.
* `storescu()` / `echoscu()`: one-shot DCMTK clients.
* REST helpers for the Orthanc flows the node takes part in (upload, push to a modality, list a
  study's instances) and tiny datasets (chest radiograph, Secondary Capture, Comprehensive 3D SR)
  built with pydicom, so the tests need no external files.

DCMTK is always called by its full path: pynetdicom installs its own `storescp`/`storescu` scripts,
which shadow DCMTK's inside the virtual environment.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import requests
from orthanc_api_client import OrthancApiClient
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ORTHANC_CONFIG_TEMPLATE = REPO_ROOT / "orthanc" / "orthanc.json"
FORWARD_CHEST_LUA = REPO_ROOT / "orthanc" / "forward-chest.lua"

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
WEBVIEWER_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so")
STORESCP_BIN = Path("/usr/bin/storescp")
STORESCU_BIN = Path("/usr/bin/storescu")
ECHOSCU_BIN = Path("/usr/bin/echoscu")

LOOPBACK = "127.0.0.1"
MAX_PDU = 131072  # the largest receive PDU DCMTK accepts; see PERFORMANCE.md
COMPREHENSIVE_3D_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.34")

#: `{symbolic name: (AE title, host, port)}`, as in Orthanc's "DicomModalities".
Modalities = Mapping[str, tuple[str, str, int]]


# --------------------------------------------------------------------------------------------
# ports and binaries


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    """Return whether something accepts TCP connections on `host:port` right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 10.0, *, host: str = LOOPBACK) -> None:
    """Wait until `host:port` accepts TCP connections; raise `TimeoutError` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not port_is_open(port, host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.1f} s")
        time.sleep(0.05)


def missing_binaries(*paths: Path) -> list[str]:
    """Return those of `paths` that are not executable files (for `pytest.mark.skipif`)."""
    return [str(path) for path in paths if shutil.which(str(path)) is None]


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Terminate `proc` (SIGTERM, then SIGKILL after `timeout` s) and return its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


def _print_log(title: str, log_path: Path) -> None:
    """Copy a peer's log to stderr, where pytest shows it with the failing test."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as exc:
        text = f"(log not readable: {exc})"
    sys.stderr.write(f"\n----- {title}: {log_path} -----\n{text}\n----- end of {title} -----\n")


# --------------------------------------------------------------------------------------------
# Orthanc


def render_orthanc_config(
    *,
    http_port: int,
    dicom_port: int,
    aet: str = "ORTHANC",
    modalities: Modalities | None = None,
    lua_scripts: Sequence[Path] = (),
    overrides: Mapping[str, Any] | None = None,
    template: Path = ORTHANC_CONFIG_TEMPLATE,
) -> dict[str, Any]:
    """Return the Orthanc configuration for a test run, derived from `orthanc/orthanc.json`.

    Orthanc expands `${VAR}` only inside JSON strings, and "HttpPort"/"DicomPort" must be JSON
    integers, so the ports are written here. String placeholders of the template (the storage
    folder, the node's host and port) stay for Orthanc to expand from the environment that
    `OrthancServer` gives it. `modalities`, when given, replaces "DicomModalities" entirely.
    """
    config: dict[str, Any] = json.loads(template.read_text())
    config["HttpPort"] = http_port
    config["DicomPort"] = dicom_port
    config["DicomAet"] = aet
    if modalities is not None:
        config["DicomModalities"] = {
            name: {"AET": ae_title, "Host": host, "Port": port}
            for name, (ae_title, host, port) in modalities.items()
        }
    config["LuaScripts"] = [str(Path(script).resolve()) for script in lua_scripts]
    config.update(overrides or {})
    return config


class OrthancServer:
    """A stock Orthanc on free loopback ports, configured from `orthanc/orthanc.json`.

    Use as a context manager::

        with OrthancServer(modalities={"DICOMNODE": ("DICOMNODE", "127.0.0.1", port)}) as orthanc:
            orthanc.api.upload_file(path)

    On exit the process is terminated and, if the block raised or Orthanc did not exit cleanly,
    its log is printed to stderr.
    """

    def __init__(
        self,
        *,
        modalities: Modalities | None = None,
        aet: str = "ORTHANC",
        lua_scripts: Sequence[Path] = (),
        config_overrides: Mapping[str, Any] | None = None,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
        verbose: bool = False,
        startup_timeout: float = 30.0,
        stop_timeout: float = 15.0,
        graceful_stop: bool = True,
    ) -> None:
        """Prepare (not start) an Orthanc.

        `modalities` replaces the template's "DicomModalities"; `lua_scripts` become
        "LuaScripts"; `config_overrides` are top-level keys written over the template; `workdir`
        holds config, storage and log (a temporary folder, removed on exit, when `None`); `env`
        adds environment variables for `${VAR}` expansion in the configuration. A graceful stop
        (SIGTERM) takes Orthanc 3 to 5 s; `graceful_stop=False` kills it at once (SIGKILL),
        which is fine for a throw-away storage folder.
        """
        self.aet = aet
        self._modalities = modalities
        self._lua_scripts = tuple(lua_scripts)
        self._overrides = dict(config_overrides or {})
        self._extra_env = dict(env or {})
        self._verbose = verbose
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._graceful_stop = graceful_stop
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._api: OrthancApiClient | None = None
        self.http_port = 0
        self.dicom_port = 0
        self.returncode: int | None = None

    # -- paths and addresses

    @property
    def workdir(self) -> Path:
        """The folder holding `orthanc.json`, `storage/` and `orthanc.log`."""
        if self._workdir is None:
            raise RuntimeError("OrthancServer is not started")
        return self._workdir

    @property
    def config_path(self) -> Path:
        """The concrete configuration file Orthanc was started with."""
        return self.workdir / "orthanc.json"

    @property
    def storage_dir(self) -> Path:
        """Orthanc's storage and index folder (`ORTHANC_STORAGE_DIR`)."""
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        """Orthanc's stdout and stderr."""
        return self.workdir / "orthanc.log"

    @property
    def http_url(self) -> str:
        """Root of the REST API, e.g. `http://127.0.0.1:8042`."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def api(self) -> OrthancApiClient:
        """An `OrthancApiClient` on `http_url`."""
        if self._api is None:
            raise RuntimeError("OrthancServer is not started")
        return self._api

    def log_text(self) -> str:
        """Return Orthanc's log so far."""
        return self.log_path.read_text(errors="replace")

    # -- life cycle

    def __enter__(self) -> Self:
        """Start Orthanc and wait until REST `/system` answers and the DICOM port listens."""
        if self._workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(
                prefix="orthanc-", ignore_cleanup_errors=True
            )
            self._workdir = Path(self._tempdir.name)
        self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_with_retries(attempts=3)
        except BaseException:
            self._cleanup_tempdir()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop Orthanc; print its log if the block failed or Orthanc exited abnormally."""
        self.stop(print_log=exc_type is not None)
        self._cleanup_tempdir()

    def stop(self, *, print_log: bool = False) -> None:
        """Terminate Orthanc (idempotent); print the log if asked or if the exit was abnormal."""
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._proc is None:
            return
        if not self._graceful_stop:
            self._proc.kill()
        self.returncode = _stop_process(self._proc, self._stop_timeout)
        self._proc = None
        killed = not self._graceful_stop and self.returncode == -signal.SIGKILL
        if print_log or (self.returncode != 0 and not killed):
            _print_log(f"Orthanc log (exit status {self.returncode})", self.log_path)

    def _cleanup_tempdir(self) -> None:
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def _start_with_retries(self, attempts: int) -> None:
        """Start Orthanc; pick new ports and retry when another process took a port meanwhile."""
        for attempt in range(1, attempts + 1):
            self.http_port = free_port()
            while (dicom_port := free_port()) == self.http_port:
                pass
            self.dicom_port = dicom_port
            try:
                self._start_once()
                return
            except OrthancStartError:
                # "The TCP port of the DICOM server is privileged or already in use"
                if attempt == attempts or "already in use" not in self.log_text():
                    raise

    def _start_once(self) -> None:
        config = render_orthanc_config(
            http_port=self.http_port,
            dicom_port=self.dicom_port,
            aet=self.aet,
            modalities=self._modalities,
            lua_scripts=self._lua_scripts,
            overrides=self._overrides,
        )
        self.storage_dir.mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2))
        env = {
            **os.environ,
            "ORTHANC_STORAGE_DIR": str(self.storage_dir),
            "DICOMNODE_HOST": os.environ.get("DICOMNODE_HOST", LOOPBACK),
            "DICOMNODE_PORT": os.environ.get("DICOMNODE_PORT", "11112"),
            **self._extra_env,
        }
        args = [str(ORTHANC_BIN), *(["--verbose"] if self._verbose else []), str(self.config_path)]
        with self.log_path.open("wb") as log:  # a failed attempt's log was printed already
            self._proc = subprocess.Popen(
                args, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(print_log=True)
            raise
        self._api = OrthancApiClient(self.http_url)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise OrthancStartError(
                    f"Orthanc exited with status {self._proc.returncode} while starting"
                )
            if time.monotonic() > deadline:
                raise OrthancStartError(
                    f"Orthanc did not answer /system in {self._startup_timeout} s"
                )
            with contextlib.suppress(requests.RequestException):
                response = requests.get(f"{self.http_url}/system", timeout=1.0)
                if response.ok and port_is_open(self.dicom_port):
                    return
            time.sleep(0.1)


class OrthancStartError(RuntimeError):
    """Orthanc exited or did not answer while starting; its log has been printed."""


# --------------------------------------------------------------------------------------------
# DCMTK


class StoreSCP:
    """DCMTK `storescp` on a free loopback port, writing what it receives under `output_dir`.

    It accepts every storage SOP class and transfer syntax DCMTK knows (`+xa`), with a
    128 KiB maximum PDU. Files are named `<modality>.<SOPInstanceUID>.dcm`, in one subfolder per
    study (`study_<StudyInstanceUID>`) when `sort_by_study` is true. storescp runs a shell command
    after writing each file (`--exec-on-reception`, synchronously, before it answers the C-STORE);
    that command appends the path to a ledger, which `received()` reads, so a listed file is
    complete, and once a C-STORE has succeeded its file is already listed.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        aet: str = "STORESCP",
        port: int | None = None,
        sort_by_study: bool = True,
        extra_args: Sequence[str] = (),
        echo_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        """Prepare (not start) a storescp; `port=None` picks a free port; `echo_args` are the
        echoscu options its readiness check needs (TLS ones for a TLS storescp)."""
        self.output_dir = Path(output_dir)
        self.aet = aet
        self.port = port or 0
        self._fixed_port = port is not None
        self._sort_by_study = sort_by_study
        self._extra_args = tuple(extra_args)
        self._echo_args = tuple(echo_args)
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def _private_dir(self) -> Path:
        if self._tempdir is None:
            raise RuntimeError("StoreSCP is not started")
        return Path(self._tempdir.name)

    @property
    def ledger_path(self) -> Path:
        """One line per completely written file (kept outside `output_dir`)."""
        return self._private_dir / "received.txt"

    @property
    def log_path(self) -> Path:
        """storescp's stdout and stderr (verbose)."""
        return self._private_dir / "storescp.log"

    def command(self) -> list[str]:
        """The storescp command line."""
        on_reception = f"printf '%s\\n' '#p/#f' >> '{self.ledger_path}'"
        sorting = ["--sort-on-study-uid", "study"] if self._sort_by_study else []
        return [
            str(STORESCP_BIN),
            "--verbose",
            "--aetitle", self.aet,
            "--output-directory", str(self.output_dir),
            "--max-pdu", str(MAX_PDU),
            "--accept-all",
            "--filename-extension", ".dcm",
            *sorting,
            "--exec-on-reception", on_reception,
            "--exec-sync",
            *self._extra_args,
            str(self.port),
        ]  # fmt: skip

    def __enter__(self) -> Self:
        """Start storescp and wait until its port listens."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._tempdir = tempfile.TemporaryDirectory(prefix="storescp-", ignore_cleanup_errors=True)
        try:
            for _ in range(1 if self._fixed_port else 3):
                if not self._fixed_port:
                    self.port = free_port()
                if self._start_once():
                    return self
            raise RuntimeError(f"storescp could not start on port {self.port} (taken?)")
        except BaseException:
            self._tempdir.cleanup()
            self._tempdir = None
            raise

    def _start_once(self) -> bool:
        """Start storescp; return False if the port is taken, raise on timeout.

        Ready means: the port was free before the start, and storescp answers a C-ECHO.
        """
        if port_is_open(self.port):
            return False
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._proc.poll() is not None:
                self.stop(print_log=True)
                return False
            ready = port_is_open(self.port)
            if (
                ready
                and echoscu(port=self.port, aet=self.aet, extra_args=self._echo_args).returncode
                == 0
            ):
                return True
            if time.monotonic() > deadline:
                self.stop(print_log=True)
                raise TimeoutError(f"storescp did not answer C-ECHO on port {self.port}")
            time.sleep(0.05)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop storescp; print its log if the block failed."""
        self.stop(print_log=exc_type is not None)
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def stop(self, *, print_log: bool = False) -> None:
        """Terminate storescp (idempotent); print its log if asked."""
        if self._proc is None:
            return
        self.returncode = _stop_process(self._proc, self._stop_timeout)
        self._proc = None
        if print_log:
            _print_log(f"storescp log (exit status {self.returncode})", self.log_path)

    def log_text(self) -> str:
        """Return storescp's log so far."""
        return self.log_path.read_text(errors="replace")

    def received(self) -> list[Path]:
        """Return the files storescp has completely written, in order of reception."""
        try:
            text = self.ledger_path.read_text()
        except FileNotFoundError:
            return []
        return [Path(line) for line in text.split("\n")[:-1]]  # the last piece is incomplete

    def study_objects(
        self, study_uid: str, want: Callable[[list[Dataset]], bool], timeout: float = 30.0
    ) -> list[Dataset]:
        """The objects of the study received so far, once `want` holds of them or `timeout`
        has passed (the caller asserts on what came)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [ds for ds in map(dcmread, self.received()) if ds.StudyInstanceUID == study_uid]
            if want(found) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Path]:
        """Wait until at least `n` files have been received; raise `TimeoutError` otherwise."""
        deadline = time.monotonic() + timeout
        while len(files := self.received()) < n:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"storescp exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"storescp received {len(files)} of {n} files in {timeout} s")
            time.sleep(0.05)
        return files


def storescu(
    files: Iterable[Path],
    *,
    port: int,
    aet: str = "DICOMNODE",
    calling: str = "MODALITY",
    host: str = LOOPBACK,
    required_contexts: bool = True,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send `files` (folders are scanned recursively) with DCMTK storescu in one association.

    `required_contexts` proposes only the SOP classes of the files (`--required`) instead of every
    storage class DCMTK knows. The result is not checked: assert on `returncode` and `stderr`.
    """
    paths = [str(path) for path in files]
    scan = ["--scan-directories", "--recurse"] if any(Path(p).is_dir() for p in paths) else []
    args = [
        str(STORESCU_BIN),
        "--aetitle", calling,
        "--call", aet,
        "--max-pdu", str(MAX_PDU),
        *(["--required"] if required_contexts else []),
        *scan,
        *extra_args,
        host, str(port),
        *paths,
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(
    *,
    port: int,
    aet: str = "DICOMNODE",
    calling: str = "ECHOSCU",
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO with DCMTK echoscu; returncode 0 means the peer answered Success."""
    args = [str(ECHOSCU_BIN), "--aetitle", calling, "--call", aet, *extra_args, host, str(port)]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------------------------
# Orthanc REST flows (orthanc-api-client)


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredInstance:
    """One instance as Orthanc indexed it."""

    orthanc_id: str
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    origin: str  # "DicomProtocol" (C-STORE), "RestApi" (upload), "Lua", "Plugins"...
    remote_aet: str | None  # the calling AE title of the C-STORE, None if not received by DICOM


def dataset_bytes(ds: Dataset) -> bytes:
    """Encode `ds` as a DICOM Part 10 file in memory."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def upload_files(api: OrthancApiClient, paths: Iterable[Path]) -> list[str]:
    """Upload DICOM files by REST (`POST /instances`); return their Orthanc instance ids."""
    ids: list[str] = []
    for path in paths:
        ids.extend(api.upload_file(str(path)))
    return ids


def upload_datasets(api: OrthancApiClient, datasets: Iterable[Dataset]) -> list[str]:
    """Upload pydicom datasets by REST (`POST /instances`); return their Orthanc instance ids."""
    ids: list[str] = []
    for ds in datasets:
        ids.extend(api.upload(dataset_bytes(ds)))
    return ids


def find_study(api: OrthancApiClient, study_instance_uid: str) -> str | None:
    """Return the Orthanc id of the study with this StudyInstanceUID, or None."""
    study_id: str | None = api.studies.lookup(study_instance_uid)
    return study_id


def send_study(
    api: OrthancApiClient, *, modality: str, study_instance_uid: str, timeout: float = 60.0
) -> str:
    """Make Orthanc C-STORE a whole study to `modality` (REST `/modalities/{modality}/store`).

    Synchronous: returns (the Orthanc study id) once the association is done; raises
    `orthanc_api_client.HttpError` if the transfer failed, `LookupError` if the study is unknown.
    """
    study_id = find_study(api, study_instance_uid)
    if study_id is None:
        raise LookupError(f"Orthanc has no study {study_instance_uid}")
    api.modalities.send(modality, study_id, timeout=timeout)
    return study_id


def list_study_instances(api: OrthancApiClient, study_instance_uid: str) -> list[StoredInstance]:
    """Return the instances Orthanc holds for a StudyInstanceUID (empty if the study is unknown)."""
    study_id = find_study(api, study_instance_uid)
    if study_id is None:
        return []
    instances: list[StoredInstance] = []
    for series_id in api.studies.get_series_ids(study_id):
        series = api.series.get(series_id)
        for instance in series.instances:
            metadata: dict[str, str] = api.instances.get_metadata(instance.orthanc_id)
            instances.append(
                StoredInstance(
                    orthanc_id=instance.orthanc_id,
                    sop_instance_uid=instance.dicom_id,
                    sop_class_uid=metadata["SopClassUid"],
                    series_instance_uid=series.dicom_id,
                    modality=series.main_dicom_tags.get("Modality") or "",
                    transfer_syntax_uid=metadata["TransferSyntax"],
                    origin=metadata.get("Origin", ""),
                    remote_aet=metadata.get("RemoteAET") or None,
                )
            )
    return instances


def wait_for_study_instances(
    api: OrthancApiClient, study_instance_uid: str, count: int, timeout: float = 30.0
) -> list[StoredInstance]:
    """Wait until Orthanc holds at least `count` instances of the study; return them."""
    deadline = time.monotonic() + timeout
    while len(instances := list_study_instances(api, study_instance_uid)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Orthanc holds {len(instances)} of {count} instances of {study_instance_uid}"
            )
        time.sleep(0.1)
    return instances


# --------------------------------------------------------------------------------------------
# tiny datasets


def _base_dataset(
    *,
    sop_class_uid: str,
    modality: str,
    study_instance_uid: str | None,
    series_instance_uid: str | None,
    patient_id: str,
    series_number: int,
) -> Dataset:
    """Patient, study, series and SOP common modules, Explicit VR Little Endian file meta."""
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Peers^Test"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = "PEERS1"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    return ds


def make_chest_radiograph(
    modality: Literal["DX", "CR"] = "DX",
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_id: str = "PEERS-0001",
    rows: int = 32,
    columns: int = 32,
) -> Dataset:
    """A tiny 12-bit MONOCHROME2 chest PA radiograph (DX For Presentation or CR)."""
    sop_class = (
        DigitalXRayImageStorageForPresentation
        if modality == "DX"
        else ComputedRadiographyImageStorage
    )
    ds = _base_dataset(
        sop_class_uid=sop_class,
        modality=modality,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        patient_id=patient_id,
        series_number=1,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
    pixels = (np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) * 4) % 4096
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def make_secondary_capture(
    *,
    study_instance_uid: str | None = None,
    patient_id: str = "PEERS-0001",
    rows: int = 16,
    columns: int = 16,
) -> Dataset:
    """A tiny 8-bit RGB Secondary Capture image (as the node's Grad-CAM overlay)."""
    ds = _base_dataset(
        sop_class_uid=SecondaryCaptureImageStorage,
        modality="OT",
        study_instance_uid=study_instance_uid,
        series_instance_uid=None,
        patient_id=patient_id,
        series_number=901,
    )
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    pixels = np.zeros((rows, columns, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(columns, dtype=np.uint8) * 8
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_comprehensive_3d_sr(
    *, study_instance_uid: str | None = None, patient_id: str = "PEERS-0001"
) -> Dataset:
    """A minimal Comprehensive 3D SR (TID 1500 root container, no findings) for transport tests."""
    ds = _base_dataset(
        sop_class_uid=COMPREHENSIVE_3D_SR_STORAGE,
        modality="SR",
        study_instance_uid=study_instance_uid,
        series_instance_uid=None,
        patient_id=patient_id,
        series_number=900,
    )
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence(
        [_code("126000", "DCM", "Imaging Measurement Report")]
    )
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "1500"
    ds.ContentTemplateSequence = DicomSequence([template])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    language = Dataset()
    language.RelationshipType = "HAS CONCEPT MOD"
    language.ValueType = "CODE"
    language.ConceptNameCodeSequence = DicomSequence(
        [_code("121049", "DCM", "Language of Content Item and Descendants")]
    )
    language.ConceptCodeSequence = DicomSequence(
        [_code("en-US", "RFC5646", "English (United States)")]
    )
    ds.ContentSequence = DicomSequence([language])
    return ds


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write `ds` as a DICOM Part 10 file at `path` (parents created); return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path
