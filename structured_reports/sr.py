"""The classification result of a study as a TID 1500 Measurement Report in a Comprehensive 3D SR.

Content tree (PS3.16 TID 1500; one TID 1501 group per finding per analysed image):

    Imaging Measurement Report
      Language, Device Observer (the model: UID, name, manufacturer, model name)
      Procedure reported: the source's requested procedure, else Plain X-ray of chest
      Image Library: the analysed images (or, when none was analysed, the images considered)
      Imaging Measurements                                   only when an image was analysed
        Measurement Group: tracking id and UID, finding type, TID 4019 algorithm (name, version,
                           weights digest, threshold), source image,
                           Probability (UCUM "1"), Presence of property: Present | Absent
      Qualitative Evaluations: Normality and Summary of the study, the critical finding flag
                           (when a finding reached its critical threshold), the disclaimer, the
                           reason of every image not analysed (`structured_reports.evaluations`)

Every UID is a pure function of its inputs (resends are idempotent; a changed result is a new
instance): the series from (study, model device), the instance also from a digest of the content
and the SOP Instance UIDs of the predecessors it names (Predecessor Documents Sequence), so a
re-analysis with a different result is a new document that refers to the one it replaces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    ImageLibrary,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from structured_reports import codes
from structured_reports.equipment import (
    algorithm_identification,
    apply_general_equipment,
    apply_series_datetime,
    contributing_equipment,
    observer_device_context,
)
from structured_reports.evaluations import qualitative_evaluations
from structured_reports.evidence import RESULT_CHARACTER_SET, evidence_header
from structured_reports.procedure import procedure_codes, referenced_requests
from structured_reports.results import (
    FindingResult,
    ImageResult,
    StudyResult,
    derive_uid,
)

SERIES_DESCRIPTION = "AI chest X-ray findings (not for diagnostic use)"
# Probabilities are stored as decimal strings (DS, 16 characters): rounded to read back exactly.
PROBABILITY_DECIMALS = 6
# highdicom describes projection radiographs (TID 1603) only with these two attributes present.
_PROJECTION_DESCRIPTORS = ("PatientOrientation", "ImagerPixelSpacing")


def build_classification_sr(
    result: StudyResult,
    *,
    previous_versions: Sequence[Dataset] = (),
    series_number: int = 9901,
    instance_number: int = 1,
    institution_name: str | None = None,
    salt: str = "",
    fast: bool = True,
) -> Dataset:
    """Encode the findings of a study (or why it was not analysed) as a Comprehensive 3D SR.

    Patient and study attributes are copied by highdicom from the source headers (the evidence,
    `structured_reports.evidence`: absent Type 2 attributes empty, text in UTF-8); the orders
    the images were acquired for become its Referenced Request Sequence.
    The document is complete but unverified: an AI result that no person has signed.
    `previous_versions` are the headers (SOP Class, SOP Instance, Study and Series Instance UIDs
    suffice) of the SRs this one replaces, listed in its Predecessor Documents Sequence.
    `salt` (the UID of a rejection note) makes a new UID for a document that states what a
    withdrawn one stated.

    `fast`: highdicom builds the document around a one-item stand-in of the content tree and
    the tree is put in place afterwards; highdicom's SR constructor otherwise deep-copies and
    re-parses the whole tree (14 groups per image), which is most of an SR's encoding time.
    The bytes are the same either way (`tests/test_sr.py`).
    """
    model = result.model
    procedures = procedure_codes(result.sources)
    requests = referenced_requests(result.sources)
    content = _report_content(result, procedures)
    sr = Comprehensive3DSR(
        evidence=[evidence_header(source) for source in result.sources],
        content=_stand_in(content) if fast else content,
        series_instance_uid=sr_series_uid(result),
        series_number=series_number,
        sop_instance_uid=sr_instance_uid(result, previous_versions, salt=salt),
        instance_number=instance_number,
        manufacturer=model.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=institution_name,
        previous_versions=list(previous_versions) or None,
        performed_procedure_codes=procedures,
        requested_procedures=requests or None,
        contributing_equipment=[contributing_equipment(model, institution_name=institution_name)],
        specific_character_set=RESULT_CHARACTER_SET,
    )
    if fast:
        sr.ContentSequence = content.ContentSequence
    sr.SeriesDescription = SERIES_DESCRIPTION
    apply_series_datetime(sr)
    if _uses_local_codes(result):
        sr.CodingSchemeIdentificationSequence = codes.coding_scheme_identification()
    apply_general_equipment(sr, model)
    return sr


def _stand_in(root: Dataset) -> Dataset:
    """The root container with only its first child (the language): what highdicom's SR
    constructor copies, parses and searches for references. The evidence it lists comes from
    the sources given, not from the tree; the tree's references are checked against them by
    the full build in the tests."""
    stand_in = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":  # the others shared, not copied
            stand_in.add(element)
    stand_in.ContentSequence = [root.ContentSequence[0]]
    return stand_in


def sr_series_uid(result: StudyResult) -> str:
    """Series Instance UID of the SR: one series per study and model version."""
    return derive_uid("sr-series", result.study_instance_uid, result.model.device_uid)


def sr_instance_uid(
    result: StudyResult, previous_versions: Sequence[Dataset] = (), *, salt: str = ""
) -> str:
    """SOP Instance UID of the SR: changes whenever the encoded content or the predecessors
    change; the same result with the same predecessors always gets the same UID."""
    predecessors = sorted(str(ds.SOPInstanceUID) for ds in previous_versions)
    return derive_uid(
        "sr",
        result.study_instance_uid,
        result.model.device_uid,
        content_digest(result),
        *predecessors,
        *((f"after:{salt}",) if salt else ()),
    )


def content_digest(result: StudyResult) -> str:
    """SHA-256 of what the SR states: per image the labels, rounded probabilities and thresholds;
    per skipped image its reason; the procedure reported; the critical findings flagged (label,
    critical threshold, image), a key present only when one is, so that an unflagged result keeps
    the digest it had before flags existed. Independent of the order in which images are listed."""
    images = sorted(
        [image.sop_instance_uid, [_finding_key(f) for f in image.findings]]
        for image in result.images
    )
    skipped = sorted([item.sop_instance_uid, item.reason] for item in result.skipped)
    procedures = [[str(c.value), str(c.scheme_designator)] for c in procedure_codes(result.sources)]
    stated: dict[str, object] = {"images": images, "skipped": skipped, "procedures": procedures}
    critical = sorted(
        [finding.label, result.critical[finding.label], image.sop_instance_uid]
        for image, finding in result.critical_hits
    )
    if critical:
        stated["critical"] = critical
    text = json.dumps(stated, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def encoded_probability(finding: FindingResult) -> float:
    """The probability as the SR stores it."""
    return round(finding.probability, PROBABILITY_DECIMALS)


def _finding_key(finding: FindingResult) -> list[object]:
    return [finding.label, encoded_probability(finding), finding.threshold]


def _uses_local_codes(result: StudyResult) -> bool:
    """True when a code of the local scheme is in the tree: a finding's or the critical flag."""
    return bool(result.critical_hits) or any(
        codes.FINDING_CODES[finding.label].scheme == codes.LOCAL_SCHEME
        for image in result.images
        for finding in image.findings
    )


def _report_content(result: StudyResult, procedures: list[CodedConcept]) -> Dataset:
    """The root CONTAINER of the TID 1500 tree."""
    if result.images:
        report = MeasurementReport(
            observation_context=_observation_context(result),
            procedure_reported=procedures,
            imaging_measurements=_measurement_groups(result),
            referenced_images=[_library_header(image.source) for image in result.images],
        )
        root: Dataset = report[0]
    else:
        root = _report_without_measurements(result, procedures)
    root.ContentSequence.append(qualitative_evaluations(result))
    return root


def _observation_context(result: StudyResult) -> ObservationContext:
    return ObservationContext(observer_device_context=observer_device_context(result.model))


def _report_without_measurements(
    result: StudyResult, procedures: list[CodedConcept]
) -> ContainerContentItem:
    """TID 1500 root for a study none of whose images was analysed.

    highdicom's MeasurementReport insists on measurement groups; TID 1500 itself needs only one of
    Imaging Measurements, Derived Imaging Measurements or Qualitative Evaluations, so this builds
    the same rows highdicom would, and the caller adds the Qualitative Evaluations.
    """
    root = ContainerContentItem(name=dicom_codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = ContentSequence()
    root.ContentSequence.extend(LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))
    root.ContentSequence.extend(_observation_context(result))
    root.ContentSequence.extend(
        CodeContentItem(
            name=dicom_codes.DCM.ProcedureReported,
            value=procedure,
            relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
        for procedure in procedures
    )
    root.ContentSequence.extend(
        ImageLibrary([_library_header(item.source) for item in result.skipped])
    )
    return root


def _library_header(source: Dataset) -> Dataset:
    """The attributes the Image Library entry of `source` is built from.

    highdicom reads Patient Orientation and Imager Pixel Spacing of every projection radiograph;
    when the source lacks either (both are optional for CR), the entry is described without them.
    """
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns"):
        setattr(header, keyword, getattr(source, keyword))
    if "FrameOfReferenceUID" in source:
        header.FrameOfReferenceUID = source.FrameOfReferenceUID
    if all(len(source.get(keyword) or ()) == 2 for keyword in _PROJECTION_DESCRIPTORS):
        header.PatientOrientation = source.PatientOrientation
        header.ImagerPixelSpacing = source.ImagerPixelSpacing
    else:
        # Modality only steers highdicom's choice of descriptors here; the copy is discarded.
        header.Modality = "OT"
    return header


def _measurement_groups(result: StudyResult) -> list[MeasurementsAndQualitativeEvaluations]:
    return [
        _finding_group(result, image, number, finding)
        for number, image in enumerate(result.images, start=1)
        for finding in image.findings
    ]


def _finding_group(
    result: StudyResult, image: ImageResult, number: int, finding: FindingResult
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group: one finding of one image, its probability and the decision at threshold."""
    model = result.model
    algorithm = algorithm_identification(model, threshold=finding.threshold)
    tracking_uid = derive_uid(
        "sr-tracking",
        result.study_instance_uid,
        model.device_uid,
        image.sop_instance_uid,
        finding.label,
    )
    presence = codes.PRESENT if finding.present else codes.ABSENT
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid, identifier=f"{finding.label}, image {number}"
        ),
        finding_type=codes.finding_code(finding.label),
        algorithm_id=algorithm,
        measurements=[
            Measurement(
                name=codes.PROBABILITY.coded(),
                value=encoded_probability(finding),
                unit=codes.UNIT_PROBABILITY.coded(),
            )
        ],
        qualitative_evaluations=[
            QualitativeEvaluation(name=codes.PRESENCE.coded(), value=presence.coded())
        ],
        source_images=[
            SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(image.source.SOPClassUID),
                referenced_sop_instance_uid=image.sop_instance_uid,
            )
        ],
    )
