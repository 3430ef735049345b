"""The SR per IHE AI Results: device observer, procedure reported from the source study, study
summary, TID 4019 per finding, PA + lateral attribution, predecessors on re-analysis, and what
dciodvfy still warns about (only the declared local code)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dicom_validators import chest_radiograph, dciodvfy_errors, dciodvfy_warnings
from highdicom.sr import MeasurementReport, srread
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage
from test_sr import MODEL, analysed_image, mixed_study, skipped_study, to_bytes

from structured_reports import codes
from structured_reports.evaluations import NO_FINDING_ABOVE_THRESHOLD
from structured_reports.results import FindingResult, ImageResult, StudyResult
from structured_reports.sr import build_classification_sr, sr_instance_uid

PROCEDURE = ("RPID-CXR2", "99HOSP", "XR Chest 2 views")


def items(node: Dataset) -> Iterator[Dataset]:
    """Every content item below `node`, depth first."""
    for child in node.get("ContentSequence", []):
        yield child
        yield from items(child)


def named(node: Dataset, code_value: str) -> list[Dataset]:
    return [i for i in items(node) if i.ConceptNameCodeSequence[0].CodeValue == code_value]


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def with_procedure(source: Dataset, where: str) -> Dataset:
    """`source` with the test procedure code in one of the places a modality puts it."""
    code = code_item(*PROCEDURE)
    if where == "RequestedProcedureCodeSequence":
        source.RequestedProcedureCodeSequence = [code]
    elif where == "RequestAttributesSequence":
        request = Dataset()
        request.RequestedProcedureID = "RP1"
        request.RequestedProcedureCodeSequence = [code]
        source.RequestAttributesSequence = [request]
    else:
        source.ProcedureCodeSequence = [code]
    return source


def study_of(*images: ImageResult) -> StudyResult:
    return StudyResult(
        study_instance_uid=str(images[0].source.StudyInstanceUID), model=MODEL, images=images
    )


def quiet_image(source: Dataset) -> ImageResult:
    """An analysed image with every finding below threshold."""
    findings = tuple(
        FindingResult(label=f.label, probability=0.01, threshold=0.5)
        for f in analysed_image(source).findings
    )
    return ImageResult(source=source, findings=findings, display=analysed_image(source).display)


def test_device_observer_names_the_model() -> None:
    """TID 1004: observer type Device with UID, name, manufacturer and model name."""
    sr = build_classification_sr(mixed_study())
    [observer_type] = named(sr, "121005")
    assert observer_type.ConceptCodeSequence[0].CodeValue == "121007"  # Device
    [uid] = named(sr, "121012")
    texts = [named(sr, code)[0].TextValue for code in ("121013", "121014", "121015")]
    assert (uid.UID, *texts) == (MODEL.device_uid, MODEL.label, MODEL.manufacturer, MODEL.name)


@pytest.mark.parametrize(
    "where",
    ["RequestedProcedureCodeSequence", "RequestAttributesSequence", "ProcedureCodeSequence"],
)
def test_procedure_reported_is_the_source_studys_requested_procedure(where: str) -> None:
    """The source's procedure code becomes Procedure reported and Performed Procedure Code."""
    source = with_procedure(chest_radiograph(number=1), where)
    sr = build_classification_sr(study_of(analysed_image(source)))
    [reported] = named(sr, "121058")
    code = reported.ConceptCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == PROCEDURE
    [performed] = sr.PerformedProcedureCodeSequence
    assert performed.CodeValue == PROCEDURE[0]


def test_procedure_reported_defaults_to_chest_radiograph() -> None:
    """Without a usable code in the source (here: one without meaning) the chest X-ray code."""
    source = chest_radiograph(number=1)
    source.RequestedProcedureCodeSequence = [code_item("X", "99HOSP", "")]
    sr = build_classification_sr(study_of(analysed_image(source)))
    [reported] = named(sr, "121058")
    assert reported.ConceptCodeSequence[0].CodeValue == codes.CHEST_RADIOGRAPH.value


def test_requested_procedure_survives_dciodvfy_and_changes_the_uid(tmp_path: Path) -> None:
    """The SR with the source's procedure is valid; what it reports is part of its identity."""
    plain = study_of(analysed_image(chest_radiograph(number=1)))
    ordered = study_of(
        analysed_image(with_procedure(chest_radiograph(number=1), "RequestedProcedureCodeSequence"))
    )
    assert dciodvfy_errors(build_classification_sr(ordered), tmp_path) == []
    assert sr_instance_uid(plain) != sr_instance_uid(ordered)


def quiet_study() -> StudyResult:
    return study_of(quiet_image(chest_radiograph(number=1)))


@pytest.mark.parametrize(
    ("study", "normality", "summary"),
    [
        (mixed_study, codes.ABNORMAL, "Findings above threshold"),
        (quiet_study, codes.NORMAL, NO_FINDING_ABOVE_THRESHOLD),
        (skipped_study, codes.NORMALITY_UNDETERMINED, "Study not analysed"),
    ],
    ids=["findings-present", "no-finding", "not-analysed"],
)
def test_study_summary(
    study: Callable[[], StudyResult], normality: codes.Concept, summary: str
) -> None:
    """Qualitative Evaluations start with Normality (CID 222) and a one-line Summary."""
    result = study()
    sr = srread(io.BytesIO(to_bytes(build_classification_sr(result))))
    [value] = named(sr, codes.NORMALITY.value)
    assert value.ConceptCodeSequence[0].CodeValue == normality.value
    [text] = named(sr, codes.SUMMARY.value)
    assert str(text.TextValue).startswith(summary)


def test_summary_names_each_present_finding_with_its_image_and_probability() -> None:
    """The Summary lists every finding at or above threshold, per image, with probability."""
    result = mixed_study()
    [text] = named(build_classification_sr(result), codes.SUMMARY.value)
    for number, image in enumerate(result.images, start=1):
        for finding in image.present:
            name = finding.label.replace("_", " ")
            assert (
                f"{name} (image {number}, probability {finding.probability:.3f}" in text.TextValue
            )


def test_every_group_carries_algorithm_identification_with_threshold() -> None:
    """TID 4019 in each group: name, version, family, weights digest and the threshold."""
    sr = build_classification_sr(mixed_study())
    groups = named(sr, "125007")
    assert len(groups) == 28
    for group in groups:
        assert named(group, "111001")[0].TextValue == MODEL.name
        assert named(group, "111003")[0].TextValue == MODEL.version
        parameters = {p.TextValue for p in named(group, "111002")}
        assert parameters == {f"weights_sha256={MODEL.weights_sha256}", "threshold=0.5"}
        assert named(group, "111000")[0].ConceptCodeSequence[0].CodeValue == "123110"
        assert named(group, "112040")[0].UID  # tracking UID


def test_pa_and_lateral_findings_are_attributed_to_their_own_image(tmp_path: Path) -> None:
    """A PA and a lateral both analysed: each group's source image is its own image, the image
    library lists both, and tracking identifiers differ between the images."""
    pa = chest_radiograph(number=1, view="PA")
    lateral = chest_radiograph(number=2, view="LL")
    result = study_of(analysed_image(pa, seed=3), analysed_image(lateral, seed=4))
    sr = build_classification_sr(result)
    assert dciodvfy_errors(sr, tmp_path) == []
    report = srread(io.BytesIO(to_bytes(sr))).content
    assert isinstance(report, MeasurementReport)
    groups = report.get_image_measurement_groups()
    by_image: dict[str, set[str]] = {}
    for group in groups:
        [source] = group.source_images
        by_image.setdefault(source.referenced_sop_instance_uid, set()).add(group.tracking_uid)
    assert set(by_image) == {pa.SOPInstanceUID, lateral.SOPInstanceUID}
    assert all(len(uids) == 14 for uids in by_image.values())
    assert not by_image[pa.SOPInstanceUID] & by_image[lateral.SOPInstanceUID]
    library = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in named(sr, "260753009")}
    assert library == {pa.SOPInstanceUID, lateral.SOPInstanceUID}


def previous_sr_header(sr: Dataset) -> Dataset:
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(header, keyword, getattr(sr, keyword))
    return header


def test_reanalysis_names_its_predecessor(tmp_path: Path) -> None:
    """A new result with `previous_versions` lists the earlier SR in the Predecessor Documents
    Sequence, gets a new UID, is valid, and is the same UID when built again."""
    first = build_classification_sr(mixed_study(seed=1))
    previous = [previous_sr_header(first)]
    second = build_classification_sr(mixed_study(seed=7), previous_versions=previous)
    [study] = second.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [ref] = series.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == Comprehensive3DSRStorage
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert second.SOPInstanceUID != sr_instance_uid(mixed_study(seed=7))  # predecessor counts
    again = build_classification_sr(mixed_study(seed=7), previous_versions=previous)
    assert again.SOPInstanceUID == second.SOPInstanceUID
    assert dciodvfy_errors(second, tmp_path) == []


def test_dciodvfy_warns_only_about_the_declared_local_code(tmp_path: Path) -> None:
    """Warnings of dciodvfy on the SRs: none but the local coding scheme (see codes docstring);
    an SR whose findings avoid Pleural_Thickening has no warning at all."""
    local = "Unrecognized defined term <99DCMNODE>"
    warnings = dciodvfy_warnings(build_classification_sr(mixed_study()), tmp_path)
    assert warnings and all(local in w for w in warnings)
    assert dciodvfy_warnings(build_classification_sr(skipped_study()), tmp_path) == []
    source = chest_radiograph(number=1)
    image = analysed_image(source)
    without_local = ImageResult(
        source=source,
        findings=tuple(f for f in image.findings if f.label != "Pleural_Thickening"),
        display=image.display,
    )
    assert dciodvfy_warnings(build_classification_sr(study_of(without_local)), tmp_path) == []
