"""A real Prometheus server (Debian's `prometheus`) scrapes a running `dicom-node serve` and the
node's series are read back through Prometheus's query API, with the values the test caused."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.uid import generate_uid

from tests.conftest import chest_image, node_env, write_study
from tests.peers import StoreSCP, free_port, storescu, wait_for_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (scripts/setup.sh)"),
]


def _scrape_config(target: str) -> str:
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: dicom-node\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    reply = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def _value(base: str, expr: str) -> float | None:
    result = _query(base, expr)
    return float(result[0]["value"][1]) if result else None


def _eventually(base: str, expr: str, expected: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (value := _value(base, expr)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{expr} = {value}, expected {expected}")
        time.sleep(0.5)


def test_prometheus_scrapes_the_node_and_returns_its_cstore_stage_and_delivery_series(
    tmp_path: Path,
) -> None:
    """`dicom-node serve` with a storescp destination and Prometheus scraping its /metrics
    every second. Two images of one study sent: Prometheus returns 2 C-STOREs answered
    0x0000 (DX class), both images in the batches, 3 deliveries sent to the PACS (the
    SR and an SC per image) and none failed, the job done, the model's identity, and the
    target up."""
    dicom_port, http_port, prom_port = free_port(), free_port(), free_port()
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        destination = f'[{{"ae_title":"PACS","host":"127.0.0.1","port":{pacs.port}}}]'
        env = node_env(tmp_path, dicom_port, http_port=str(http_port), destinations=destination)
        config = tmp_path / "prometheus.yml"
        config.write_text(_scrape_config(f"127.0.0.1:{http_port}"))
        with (tmp_path / "serve.log").open("wb") as log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "serve"], env=env, stdout=log, stderr=log
            )
        with (tmp_path / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=log,
                stderr=log,
            )
        base = f"http://127.0.0.1:{prom_port}"
        try:
            wait_for_port(dicom_port, timeout=90)
            wait_for_port(prom_port, timeout=30)
            study = str(generate_uid())
            images = [chest_image(study_uid=study, seed=n) for n in range(2)]
            assert storescu(write_study(tmp_path / "in", images), port=dicom_port).returncode == 0
            pacs.wait_for(3, timeout=60)
            _eventually(base, 'up{job="dicom-node"}', 1.0)
            _eventually(
                base,
                'sum(dicom_node_cstore_requests_total{status="0x0000",'
                'sop_class="1.2.840.10008.5.1.4.1.1.1.1"})',
                2.0,
            )
            _eventually(base, "sum(dicom_node_job_stage_seconds_count{stage='decode'})", 1.0)
            _eventually(base, "sum(dicom_node_job_stage_seconds_count{stage='encode'})", 1.0)
            assert (_value(base, "sum(dicom_node_batch_size_sum)") or 0) == 2.0  # both images
            destination_label = f"PACS@127.0.0.1:{pacs.port}"
            _eventually(
                base,
                f'dicom_node_deliveries_total{{destination="{destination_label}",outcome="sent"}}',
                3.0,
            )
            assert not _query(base, 'dicom_node_deliveries_total{outcome="failed"}')
            _eventually(base, 'dicom_node_jobs_finished_total{state="done"}', 1.0)
            _eventually(base, 'dicom_node_jobs{state="done"}', 1.0)
            model = _query(base, "dicom_node_model_info")
            assert model and model[0]["metric"]["name"] == "cxr14-densenet121-demo"
            assert _value(base, "dicom_node_ready") == 1.0
        finally:
            serve.send_signal(signal.SIGTERM)
            prometheus.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=60) == 0
            prometheus.wait(timeout=30)
