"""The whole loop against real peers: DCMTK storescu as the modality, the node with the demo
model, DCMTK storescp as the PACS. Every accepted transfer syntax and MONOCHROME1 CR are
analysed; every SR and SC passes dciodvfy; skips are explicit; the audit trail is complete."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from highdicom.sr import Comprehensive3DSR, MeasurementReport
from pydicom import Dataset, dcmread
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from sqlalchemy import select

from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Delivery, Instance, Job, Result, Skip, utcnow
from dicom_node.testing import node_settings
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.dicom_validators import dciodvfy_errors
from tests.peers import StoreSCP, storescu

pytestmark = pytest.mark.integration

Prepare = Callable[[Path], Path]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path_factory.mktemp("pacs"), aet="PACS") as scp:
        yield scp


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pacs: StoreSCP) -> Iterator[Node]:
    """One node with the demo model for the module (the model loads once). It decodes in a pool
    of two processes; the other integration tests decode in the worker thread."""
    root = tmp_path_factory.mktemp("node")
    destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
    settings = node_settings(root, decode_processes=2, destinations=[destination])
    with Node(settings) as running:
        yield running


def _dcmtk(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _jpeg_lossless(path: Path) -> Path:
    out = path.with_suffix(".jpeg-lossless.dcm")
    _dcmtk(["/usr/bin/dcmcjpeg", str(path), str(out)])  # default: lossless, process 14 SV1
    return out


def _deflate(path: Path) -> Path:
    out = path.with_suffix(".deflated.dcm")
    _dcmtk(["/usr/bin/dcmconv", "+td", str(path), str(out)])
    return out


def _pydicom(syntax: str) -> Prepare:
    def prepare(path: Path) -> Path:
        ds = dcmread(path)
        ds.compress(syntax)
        out = path.with_suffix(f".{syntax}.dcm")
        ds.save_as(out, enforce_file_format=True)
        return out

    return prepare


def _as_is(path: Path) -> Path:
    return path


# variant: (image options, how the file is prepared, its transfer syntax, storescu's proposal)
VARIANTS: dict[str, tuple[dict[str, object], Prepare, str, str]] = {
    "explicit-le-dx": ({}, _as_is, "1.2.840.10008.1.2.1", "-xe"),
    "monochrome1-cr": (
        {"modality": "CR", "photometric": "MONOCHROME1"},
        _as_is,
        "1.2.840.10008.1.2.1",
        "-xe",
    ),
    "jpeg-lossless": ({}, _jpeg_lossless, "1.2.840.10008.1.2.4.70", "-xs"),
    "jpeg-ls": ({}, _pydicom(JPEGLSLossless), JPEGLSLossless, "-xt"),
    "jpeg-2000": ({}, _pydicom(JPEG2000Lossless), JPEG2000Lossless, "-xv"),
    "rle": ({}, _pydicom(RLELossless), RLELossless, "-xr"),
    "deflate": ({}, _deflate, "1.2.840.10008.1.2.1.99", "-xd"),
    "8-bit": ({"bits_stored": 8}, _as_is, "1.2.840.10008.1.2.1", "-xe"),
    "16-bit": ({"bits_stored": 16}, _as_is, "1.2.840.10008.1.2.1", "-xe"),
    "monochrome1-cr-10-bit-rescaled": (
        {
            "modality": "CR",
            "photometric": "MONOCHROME1",
            "bits_stored": 10,
            "rescale_intercept": -512,
        },
        _as_is,
        "1.2.840.10008.1.2.1",
        "-xe",
    ),
    "no-voi-window": ({"window": False}, _as_is, "1.2.840.10008.1.2.1", "-xe"),
}


def _results_of(pacs: StoreSCP, study_uid: str, n: int) -> dict[str, Dataset]:
    """The study's objects at the PACS by modality, once `n` modalities are there."""
    found = pacs.study_objects(study_uid, lambda f: len({str(ds.Modality) for ds in f}) >= n)
    mine = {str(ds.Modality): ds for ds in found}
    if len(mine) < n:
        raise TimeoutError("results did not reach the PACS")
    return mine


def _srs_of(pacs: StoreSCP, study_uid: str, n: int) -> list[Dataset]:
    """The first `n` SRs of the study the PACS received."""
    found = pacs.study_objects(study_uid, lambda f: sum(ds.Modality == "SR" for ds in f) >= n)
    srs = [ds for ds in found if ds.Modality == "SR"]
    if len(srs) < n:
        raise TimeoutError("the SRs did not reach the PACS")
    return srs


def _skips_and_analysed(node: Node, job_id: int) -> tuple[list[Skip], set[str]]:
    """The job's skipped-image rows and the SOP Instance UIDs it has results for."""
    with node.sessions() as session:
        skips = list(session.scalars(select(Skip).where(Skip.job_id == job_id)))
        analysed = set(
            session.scalars(select(Result.sop_instance_uid).where(Result.job_id == job_id))
        )
    return skips, analysed


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_input_variant_is_analysed_and_results_validate(
    variant: str, node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """The study is analysed (14 findings), SR and SC reach the PACS in the source study, and
    both pass dciodvfy without errors."""
    options, prepare, syntax, proposal = VARIANTS[variant]
    study_uid = str(generate_uid())
    (plain,) = write_study(tmp_path, [chest_image(study_uid=study_uid, **options)])  # type: ignore[arg-type]
    source = prepare(plain)
    assert str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    sent = storescu([source], port=node.port, calling="MODALITY", extra_args=[proposal])
    assert sent.returncode == 0, sent.stderr
    job = wait_finished(node.sessions, study_uid)
    assert job.state == "done", job.detail
    with node.sessions() as session:
        labels = session.scalars(select(Result.label).where(Result.job_id == job.id)).all()
        received = session.scalars(
            select(Instance.transfer_syntax_uid).where(Instance.study_instance_uid == study_uid)
        ).one()
    assert received == syntax  # the node took the compressed form and decoded it itself
    assert len(labels) == 14
    results = _results_of(pacs, study_uid, 2)
    sr, sc = results["SR"], results["OT"]
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    assert sc.PatientID == sr.PatientID == "TEST-PID-4711"
    for ds in (sr, sc):
        assert dciodvfy_errors(ds, tmp_path) == []


def test_lateral_is_skipped_with_reason_and_frontal_analysed(
    node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """PA + lateral: the PA is analysed, the lateral is recorded as skipped with its reason; every
    finding of the SR refers to the PA, the SR's evidence and text name the lateral, the one SC
    derives from the PA, and SR and SC pass dciodvfy."""
    study_uid = str(generate_uid())
    pa = chest_image(study_uid=study_uid, findings=("Effusion",), seed=3)
    lateral = chest_image(study_uid=study_uid, findings=(), view_position="LL", seed=4)
    assert storescu(write_study(tmp_path, [pa, lateral]), port=node.port).returncode == 0
    job = wait_finished(node.sessions, study_uid)
    assert job.state == "done"
    (skip,), analysed = _skips_and_analysed(node, job.id)
    with node.sessions() as session:
        skipped_events = session.scalars(
            select(AuditEvent).where(
                AuditEvent.event_type == "image_skipped", AuditEvent.job_id == job.id
            )
        ).all()
    assert skip.sop_instance_uid == lateral.SOPInstanceUID
    assert "LL" in skip.reason and "not frontal" in skip.reason
    assert analysed == {str(pa.SOPInstanceUID)}
    assert [e.sop_instance_uid for e in skipped_events] == [lateral.SOPInstanceUID]
    results = _results_of(pacs, study_uid, 2)
    sr, sc = results["SR"], results["OT"]
    report = Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, MeasurementReport)
    groups = report.get_image_measurement_groups()
    assert len(groups) == 14
    assert {g.source_images[0].referenced_sop_instance_uid for g in groups} == {pa.SOPInstanceUID}
    evidence = {
        ref.ReferencedSOPInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {pa.SOPInstanceUID, lateral.SOPInstanceUID}
    assert lateral.SOPInstanceUID in str(sr.ContentSequence[-1].ContentSequence[-1].TextValue)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == pa.SOPInstanceUID
    for ds in (sr, sc):
        assert dciodvfy_errors(ds, tmp_path) == []


def test_undecodable_pixels_are_skipped_with_reason_and_the_rest_analysed(
    node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """A PA whose Pixel Data is cut short, beside a good PA: the decode pool reports it, the job
    records it as skipped with the decoder's reason, and the good PA is analysed and reported."""
    study_uid = str(generate_uid())
    good = chest_image(study_uid=study_uid, seed=5)
    broken = chest_image(study_uid=study_uid, seed=6)
    broken.PixelData = broken.PixelData[:4096]
    assert storescu(write_study(tmp_path, [good, broken]), port=node.port).returncode == 0
    job = wait_finished(node.sessions, study_uid)
    assert job.state == "done"
    (skip,), analysed = _skips_and_analysed(node, job.id)
    assert skip.sop_instance_uid == broken.SOPInstanceUID
    assert skip.reason.startswith("pixel data: cannot decode Pixel Data")
    assert analysed == {str(good.SOPInstanceUID)}
    sr = _results_of(pacs, study_uid, 1)["SR"]
    assert broken.SOPInstanceUID in str(sr.ContentSequence[-1].ContentSequence[-1].TextValue)


def test_study_without_eligible_image_is_skipped_and_still_reported(
    node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """Only a non-chest image: the job is skipped with the reason and an SR saying so (Normality
    Undetermined, "Study not analysed") still reaches the PACS (silence is never ambiguous); it
    passes dciodvfy."""
    study_uid = str(generate_uid())
    knee = chest_image(study_uid=study_uid, findings=(), body_part="KNEE")
    assert storescu(write_study(tmp_path, [knee]), port=node.port).returncode == 0
    job = wait_finished(node.sessions, study_uid)
    assert job.state == "skipped"
    assert "body part KNEE is not chest" in (job.detail or "")
    sr = _results_of(pacs, study_uid, 1)["SR"]
    assert dciodvfy_errors(sr, tmp_path) == []
    evaluations = sr.ContentSequence[-1]  # Qualitative Evaluations, last row of TID 1500
    normality = evaluations.ContentSequence[0]
    assert normality.ConceptCodeSequence[0].CodeMeaning == "Normality Undetermined"
    assert "Study not analysed" in evaluations.ContentSequence[1].TextValue


def test_job_whose_worker_died_at_every_attempt_is_failed_not_analysed_again(
    node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """A stored study whose job has used up its attempts with a dead worker's lease (each claim
    counts as an attempt): the worker fails it without analysing it again, audits the failure,
    and still sends an SR saying that the analysis could not be completed and why (it passes
    dciodvfy and replaces nothing: the first analysis's SR stays the newest analysed one)."""
    study_uid = str(generate_uid())
    paths = write_study(tmp_path, [chest_image(study_uid=study_uid)])
    assert storescu(paths, port=node.port).returncode == 0
    first = wait_finished(node.sessions, study_uid)
    attempts = node.settings.max_job_attempts
    with node.sessions.begin() as session:
        job = Job(
            study_instance_uid=study_uid,
            state="running",
            attempts=attempts,
            lease_owner="a-dead-worker",
            lease_expires_at=utcnow() - dt.timedelta(seconds=1),
            created_at=utcnow(),
        )
        session.add(job)
        session.flush()
        job_id = job.id
    abandoned = wait_finished(node.sessions, study_uid, after=first.id)
    assert (abandoned.id, abandoned.state) == (job_id, "failed")
    assert f"abandoned after {attempts} attempt(s)" in (abandoned.detail or "")
    with node.sessions() as session:
        events = session.scalars(
            select(AuditEvent.event_type).where(AuditEvent.job_id == job_id)
        ).all()
    # never started again; its SR is sent by the delivery lane once the job is recorded
    assert events == ["image_skipped", "job_failed", "result_sent"]
    srs = _srs_of(pacs, study_uid, 2)
    summaries = {
        ds.SOPInstanceUID: ds.ContentSequence[-1].ContentSequence[1].TextValue for ds in srs
    }
    [failure_sr] = [ds for ds in srs if "could not be completed" in summaries[ds.SOPInstanceUID]]
    summary = summaries[failure_sr.SOPInstanceUID]
    assert "analysis could not be completed" in summary and "abandoned after" in summary
    assert "PredecessorDocumentsSequence" not in failure_sr
    assert dciodvfy_errors(failure_sr, tmp_path) == []


def test_audit_trail_shows_every_step_of_a_study(
    node: Node, pacs: StoreSCP, tmp_path: Path
) -> None:
    """Received, ready, started, finished, sent (SR and SC): in order, with model identity (the
    delivery lane sends a job's results once the job has recorded its end)."""
    study_uid = str(generate_uid())
    assert (
        storescu(
            write_study(tmp_path, [chest_image(study_uid=study_uid)]), port=node.port
        ).returncode
        == 0
    )
    job = wait_finished(node.sessions, study_uid)
    _results_of(pacs, study_uid, 2)
    with node.sessions() as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.study_instance_uid == study_uid)
            .order_by(AuditEvent.id)
        ).all()
    kinds = [e.event_type for e in events]
    assert kinds == [
        "instance_received",
        "study_ready",
        "job_started",
        "job_finished",
        "result_sent",
        "result_sent",
    ]
    model = node.services.model_label if node.services else ""
    assert "cxr14-densenet121-demo" in model
    assert "synthetic demo" in model
    assert all(e.model == model for e in events[2:])
    assert {e.called_ae for e in events if e.event_type == "result_sent"} == {"PACS"}
    assert all(e.job_id == job.id for e in events[1:])


def test_each_destination_gets_the_objects_and_sc_findings_it_asks_for(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Two destinations: a PACS with SR and one SC per finding above threshold
    (`sc_findings = "per_finding"`), a viewer with only the "all" SC (`send_sr = false`). Each
    receives exactly that; the SCs pass dciodvfy."""
    with (
        StoreSCP(tmp_path / "pacs", aet="PACS") as pacs,
        StoreSCP(tmp_path / "viewer", aet="VIEWER") as viewer,
    ):
        pacs_destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
        viewer_destination = {"ae_title": "VIEWER", "host": "127.0.0.1", "port": viewer.port}
        settings = make_settings(
            destinations=[
                {**pacs_destination, "sc_findings": "per_finding"},
                {**viewer_destination, "send_sr": False, "sc_findings": "all"},
            ]
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            image = chest_image(study_uid=study_uid, findings=("Cardiomegaly", "Effusion"), seed=3)
            assert storescu(write_study(tmp_path / "in", [image]), port=node.port).returncode == 0
            job = wait_finished(node.sessions, study_uid)
            with node.sessions() as session:
                present = session.scalars(
                    select(Result.label).where(Result.job_id == job.id, Result.present)
                ).all()
                sent = session.scalars(
                    select(Delivery.state).where(Delivery.job_id == job.id)
                ).all()
            assert present, "the demo model should find something on this phantom"
            at_pacs = [dcmread(p) for p in pacs.wait_for(1 + len(present))]
            at_viewer = [dcmread(p) for p in viewer.wait_for(1)]
    assert set(sent) == {"sent"}
    assert sorted(ds.Modality for ds in at_pacs) == ["OT"] * len(present) + ["SR"]
    pacs_scs = [ds for ds in at_pacs if ds.Modality == "OT"]
    assert {"per finding" in ds.SeriesDescription for ds in pacs_scs} == {True}
    assert len({ds.SOPInstanceUID for ds in pacs_scs}) == len(present)
    [viewer_sc] = at_viewer
    assert viewer_sc.Modality == "OT" and "all findings" in viewer_sc.SeriesDescription
    for ds in [*pacs_scs, viewer_sc]:
        assert dciodvfy_errors(ds, tmp_path) == []
