"""Real vendor files and their variants (tests/real_world.py), pushed with DCMTK `dcmsend` to a
running node: every study the node acknowledges gets an SR back at the PACS (DCMTK storescp),
analysed or saying why not, for each failure class of issue "Real-world studies": absent Type 2
attributes, ISO 2022 character sets, a view stated only by code, DX For Processing, compressed
and lossy sources, orders in Request Attributes, a body part the model does not read. Every SR
and SC passes dciodvfy; highdicom reads every SR; DCMTK dsrdump parses it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from highdicom.sr import Comprehensive3DSR
from pydicom import Dataset, dcmread
from pydicom.uid import SecondaryCaptureImageStorage
from sqlalchemy import select

from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import Skip
from dicom_node.testing import node_settings
from tests.dicom_validators import dciodvfy_errors, run_tool
from tests.peers import StoreSCP, storescu
from tests.real_world import (
    FUJI_CR_TIBIA,
    PHILIPS_CR_CHEST,
    PHILIPS_CR_CHEST_J2K_LOSSLESS,
    PHILIPS_CR_CHEST_J2K_LOSSY,
    Variant,
    compressed,
    fresh_copy,
    gsps_for,
    kos_for,
    view_only_as_code,
    with_patient_name_in,
    with_request_attributes,
)

pytestmark = pytest.mark.integration

ANALYSED, NOT_ANALYSED = "analysed", "not analysed"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


@dataclass(frozen=True, kw_only=True, slots=True)
class Case:
    make: Variant
    outcome: str
    reason: str = ""  # words of the skip reason, for a study not analysed


def _copy(name: str, *modifications: str) -> Variant:
    return lambda folder: fresh_copy(name, folder, *modifications)


CASES = {
    "philips-cr-chest-pa": Case(make=_copy(PHILIPS_CR_CHEST), outcome=ANALYSED),
    "no-study-id": Case(make=_copy(PHILIPS_CR_CHEST, "-ea", "(0020,0010)"), outcome=ANALYSED),
    "no-type-2-patient-and-study-attributes": Case(
        make=_copy(
            PHILIPS_CR_CHEST,
            *("-ea", "(0008,0050)", "-ea", "(0010,0030)", "-ea", "(0010,0040)"),
            *("-ea", "(0008,0020)", "-ea", "(0008,0030)", "-ea", "(0008,0090)"),
        ),
        outcome=ANALYSED,
    ),
    "iso-2022-ir-87-japanese": Case(make=with_patient_name_in("chrH31.dcm"), outcome=ANALYSED),
    "iso-2022-ir-149-korean": Case(
        make=with_patient_name_in("chrKoreanMulti.dcm"), outcome=ANALYSED
    ),
    "dx-view-only-as-code": Case(make=view_only_as_code, outcome=ANALYSED),
    "jpeg-2000-lossless": Case(make=_copy(PHILIPS_CR_CHEST_J2K_LOSSLESS), outcome=ANALYSED),
    "jpeg-2000-lossy": Case(make=_copy(PHILIPS_CR_CHEST_J2K_LOSSY), outcome=ANALYSED),
    "jpeg-ls-by-dcmcjpls": Case(make=compressed("dcmcjpls"), outcome=ANALYSED),
    "rle-by-dcmcrle": Case(make=compressed("dcmcrle"), outcome=ANALYSED),
    "jpeg-lossless-by-dcmcjpeg": Case(make=compressed("dcmcjpeg"), outcome=ANALYSED),
    "ordered-with-request-attributes": Case(make=with_request_attributes, outcome=ANALYSED),
    "dx-for-processing": Case(
        make=_copy(
            PHILIPS_CR_CHEST,
            *("-m", f"(0008,0016)={DX_FOR_PROCESSING}", "-m", "(0008,0060)=DX"),
        ),
        outcome=NOT_ANALYSED,
        reason="For Processing",
    ),
    "fuji-cr-tibia": Case(
        make=_copy(FUJI_CR_TIBIA), outcome=NOT_ANALYSED, reason="body part EXTREMITY"
    ),
    "window-width-not-a-number": Case(
        make=_copy(PHILIPS_CR_CHEST, "-m", "(0028,1051)=wide"),
        outcome=NOT_ANALYSED,
        reason="window",
    ),
}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path_factory.mktemp("pacs"), aet="PACS") as scp:
        yield scp


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pacs: StoreSCP) -> Iterator[Node]:
    destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
    settings = node_settings(tmp_path_factory.mktemp("node"), destinations=[destination])
    with Node(settings) as running:
        yield running


def dcmsend(path: Path, port: int) -> subprocess.CompletedProcess[str]:
    """DCMTK `dcmsend` of one file to the node, as a modality would."""
    return subprocess.run(
        ["/usr/bin/dcmsend", "-aec", "DICOMNODE", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_every_acknowledged_study_gets_an_sr(
    name: str, node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """Pushed by dcmsend and acknowledged, the study gets an SR at the PACS: analysed (with an
    SC), or not analysed with its reason; both pass dciodvfy, highdicom and dsrdump."""
    case = CASES[name]
    path = case.make(tmp_path / name)
    source = dcmread(path, stop_before_pixels=True)
    sent = dcmsend(path, node.port)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    study_uid = str(source.StudyInstanceUID)
    job = wait_finished(node.sessions, study_uid, timeout=120)
    expected = 2 if case.outcome == ANALYSED else 1
    received = pacs.study_objects(study_uid, lambda found: len(found) >= expected)
    [sr] = [ds for ds in received if ds.Modality == "SR"]
    scs = [ds for ds in received if ds.SOPClassUID == SecondaryCaptureImageStorage]
    assert dciodvfy_errors(sr, tmp_path) == []
    Comprehensive3DSR.from_dataset(sr)  # highdicom reads it back
    written = tmp_path / "sr.dcm"
    sr.save_as(written, enforce_file_format=True)
    assert run_tool("dsrdump", str(written)).returncode == 0
    evaluations = sr.ContentSequence[-1].ContentSequence
    texts = " ".join(str(item.get("TextValue", "")) for item in evaluations)
    if case.outcome == ANALYSED:
        assert job.state == "done", job.detail
        assert len(scs) == 1 and dciodvfy_errors(scs[0], tmp_path) == []
        assert "Study not analysed" not in texts
    else:
        assert job.state == "skipped", job.detail
        assert scs == [] and "Study not analysed" in texts and case.reason in texts
    _check_case(name, source, sr, scs)


def _check_case(name: str, source: Dataset, sr: Dataset, scs: list[Dataset]) -> None:
    """What each case is about, beyond getting an answer."""
    if name in ("no-study-id", "no-type-2-patient-and-study-attributes"):
        for keyword in ("StudyID", "AccessionNumber", "PatientBirthDate", "PatientSex"):
            assert keyword in sr and (keyword in source or sr[keyword].value in ("", None))
    if name.startswith("iso-2022"):
        assert sr.SpecificCharacterSet == "ISO_IR 192"
        assert str(sr.PatientName) == str(source.PatientName)
        assert str(scs[0].PatientName) == str(source.PatientName)
    if name == "jpeg-2000-lossy":
        assert scs[0].LossyImageCompression == "01"
    if name == "ordered-with-request-attributes":
        [request] = sr.ReferencedRequestSequence
        assert request.AccessionNumber == "ACC-20261201-7"
        assert request.RequestedProcedureID == "RP-4711"
        assert request.StudyInstanceUID == source.StudyInstanceUID
    if scs:
        assert scs[0].StudyDescription == source.get("StudyDescription", scs[0].StudyDescription)
    assert sr.SeriesDate and sr.SeriesTime


def test_dcmtk_storescu_pushes_a_folder_with_a_gsps_and_a_kos(
    node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """DCMTK storescu sends a study folder holding the Philips PA, a GSPS and a KOS: every file
    is accepted (it used to abort at the GSPS), the PA is analysed, and the GSPS and KOS are
    recorded as received and not analysed."""
    folder = tmp_path / "study"
    pa_path = fresh_copy(PHILIPS_CR_CHEST, folder / "pa")
    pa = dcmread(pa_path, stop_before_pixels=True)
    files = [pa_path, gsps_for(pa, folder), kos_for(pa, folder)]
    sent = storescu(files, port=node.port)
    assert sent.returncode == 0, sent.stderr
    job = wait_finished(node.sessions, str(pa.StudyInstanceUID), timeout=120)
    assert job.state == "done", job.detail
    with node.sessions() as session:
        rows = session.scalars(select(Skip).where(Skip.job_id == job.id)).all()
        reasons = sorted(row.reason for row in rows)
    assert len(reasons) == 2 and all(r.startswith("not an image") for r in reasons)
    received = pacs.study_objects(str(pa.StudyInstanceUID), lambda found: len(found) >= 2)
    assert sorted(ds.Modality for ds in received if ds.Modality == "SR") == ["SR"]
