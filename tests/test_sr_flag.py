"""The critical-finding flag of the SR: a coded item in the Qualitative Evaluations only when a
finding reaches its critical threshold, read back from the bytes; the SR's UID follows it."""

from __future__ import annotations

import io

import pytest
from highdicom.sr import srread
from pydicom import Dataset
from test_sr import flagged_study, mixed_study, to_bytes

from structured_reports import codes
from structured_reports.results import StudyResult
from structured_reports.sr import build_classification_sr, content_digest, sr_instance_uid

CRITICAL = (codes.CRITICAL_FINDING.value, codes.LOCAL_SCHEME)


def with_critical(critical: dict[str, float]) -> StudyResult:
    """The mixed study of tests/test_sr.py with the given critical thresholds in force."""
    base = mixed_study()
    return StudyResult(
        study_instance_uid=base.study_instance_uid,
        model=base.model,
        images=base.images,
        skipped=base.skipped,
        critical=critical,
    )


def evaluations(result: StudyResult) -> list[Dataset]:
    """The items of the Qualitative Evaluations container of the SR, read back from its bytes."""
    sr = srread(io.BytesIO(to_bytes(build_classification_sr(result))))
    [container] = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value
    ]
    return list(container.ContentSequence)


def flags(result: StudyResult) -> list[tuple[str, str]]:
    """(code value, scheme) of each Critical finding item of the SR."""
    return [
        (
            str(item.ConceptCodeSequence[0].CodeValue),
            str(item.ConceptCodeSequence[0].CodingSchemeDesignator),
        )
        for item in evaluations(result)
        if item.ValueType == "CODE"
        and (
            item.ConceptNameCodeSequence[0].CodeValue,
            item.ConceptNameCodeSequence[0].CodingSchemeDesignator,
        )
        == CRITICAL
    ]


def test_flag_names_each_finding_at_or_above_its_critical_threshold() -> None:
    """Pneumothorax and Pleural thickening reach theirs: one Critical finding item each, valued
    with the finding's code; Hernia (0.999) does not; a Comment states the images and values."""
    result = flagged_study()
    assert flags(result) == [("36118008", "SCT"), ("PLEURAL-THICK", codes.LOCAL_SCHEME)]
    comments = [str(item.TextValue) for item in evaluations(result) if item.ValueType == "TEXT"]
    [stated] = [text for text in comments if text.startswith("Critical finding flagged")]
    assert "Pneumothorax (image 1" in stated and "critical threshold 0.050" in stated
    assert "Hernia" not in stated


def test_flag_follows_normality_and_summary() -> None:
    """Normality and Summary keep the first two places (readers and tests rely on them)."""
    items = evaluations(flagged_study())
    assert items[0].ConceptNameCodeSequence[0].CodeValue == codes.NORMALITY.value
    assert items[1].ConceptNameCodeSequence[0].CodeValue == codes.SUMMARY.value
    assert (
        items[2].ConceptNameCodeSequence[0].CodeValue,
        items[2].ConceptNameCodeSequence[0].CodingSchemeDesignator,
    ) == CRITICAL


@pytest.mark.parametrize(
    "critical", [{}, {"Hernia": 0.999}], ids=["no critical thresholds", "none reached"]
)
def test_no_flag_when_no_finding_reaches_a_critical_threshold(critical: dict[str, float]) -> None:
    """Without critical thresholds, or with none reached, the SR has no flag and the very UID
    (and content digest) of the SR without critical thresholds."""
    result = with_critical(critical)
    assert flags(result) == []
    assert not any(
        "Critical finding" in str(item.get("TextValue", "")) for item in evaluations(result)
    )
    assert content_digest(result) == content_digest(mixed_study())
    assert sr_instance_uid(result) == sr_instance_uid(mixed_study())


def test_flag_changes_the_content_digest_and_the_uid() -> None:
    """A flagged result is another document: the digest and the SOP Instance UID change, and
    change again when the critical threshold stated changes."""
    flagged, other = flagged_study(), with_critical({"Pneumothorax": 0.06})
    assert content_digest(flagged) != content_digest(mixed_study())
    assert sr_instance_uid(flagged) != sr_instance_uid(mixed_study())
    assert content_digest(other) not in {content_digest(flagged), content_digest(mixed_study())}


def test_flag_declares_the_local_scheme() -> None:
    """The flag's concept name is local (99DCMNODE): the SR declares the scheme even when no
    finding code is local (an SR of Pneumothorax only, without Pleural thickening)."""
    result = with_critical({"Pneumothorax": 0.05})
    sr = build_classification_sr(result)
    designators = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert codes.LOCAL_SCHEME in designators


def test_highest_probability_per_label_is_flagged_once() -> None:
    """A label reaching its critical threshold on both images is flagged once, on the image
    where its probability is highest."""
    result = with_critical({"Pleural_Thickening": 0.01})
    [(image, finding)] = result.critical_hits
    best = max(
        (f.probability, i.sop_instance_uid)
        for i in result.images
        for f in i.findings
        if f.label == "Pleural_Thickening"
    )
    assert (finding.probability, image.sop_instance_uid) == best
    assert flags(result) == [("PLEURAL-THICK", codes.LOCAL_SCHEME)]


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_critical_threshold_out_of_range_is_refused(threshold: float) -> None:
    """A critical threshold outside (0, 1) is a ValueError naming the label."""
    with pytest.raises(ValueError, match="Pneumothorax"):
        with_critical({"Pneumothorax": threshold})
