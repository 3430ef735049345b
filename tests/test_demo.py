"""The README's first Quick start command: `dicom-node demo` pushes a synthetic study through a
node and gets its SR and SC back, with every path relative to the working folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_gets_sr_and_sc_back_with_relative_paths(tmp_path: Path) -> None:
    """`dicom-node demo` from the repository root with a relative work folder (as its default
    var/demo is): exit 0, the PA analysed and the lateral skipped with its reason, and an SR
    and an SC of the source study at its PACS (the spool kept under a relative spool_dir)."""
    workdir = Path(os.path.relpath(tmp_path / "demo", ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "demo", "--workdir", str(workdir)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "view position LL is not frontal (PA or AP)" in done.stdout
    assert "cannot be read" not in done.stdout
    received = sorted((tmp_path / "demo" / "pacs").rglob("*.dcm"))
    modalities = sorted(str(dcmread(p, stop_before_pixels=True).Modality) for p in received)
    assert modalities == ["OT", "SR"]
    study = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in received}
    sources = {
        str(dcmread(p, stop_before_pixels=True).StudyInstanceUID)
        for p in (tmp_path / "demo" / "study").rglob("*.dcm")
    }
    assert study == sources
