"""TID 1500 row 12, Qualitative Evaluations of the whole study: the summary a reader sees first
(Normality and a one-line Summary), the disclaimer, and why each image was not analysed.

Normality (121402, DCM) takes a CID 222 value: Abnormal when any finding of any analysed image is
at or above its threshold, Normal when none is, Normality Undetermined when no image was
analysed. It speaks only for the findings the model reads; the Summary text says which.

A study with a finding at or above its critical threshold (`StudyResult.critical`) is flagged:
after the Summary, one CODE item per such label, Critical finding (99DCMNODE CRITICAL-FINDING)
= the finding's code, and a Comment saying on which image, with what probability and against
which critical threshold (`structured_reports.codes` says why the concept is local).
"""

from __future__ import annotations

from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    ContentSequence,
    RelationshipTypeValues,
    TextContentItem,
)

from structured_reports import codes
from structured_reports.equipment import disclaimer
from structured_reports.results import StudyResult

NOT_ANALYSED = "Study not analysed: none of its images was suitable for the model."
ANALYSIS_FAILED = "Study not analysed: the analysis could not be completed"
NO_FINDING_ABOVE_THRESHOLD = "No finding above threshold"
CRITICAL_FLAGGED = "Critical finding flagged (critical threshold reached)"


def qualitative_evaluations(result: StudyResult) -> ContainerContentItem:
    """The Qualitative Evaluations container: Normality, Summary, disclaimer, skipped images."""
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS.coded(),
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    comments = [f"{disclaimer(result.model)} ({result.model.label})."]
    comments.extend(
        f"Image not analysed (SOP Instance UID {item.sop_instance_uid}): {item.reason}"
        for item in result.skipped
    )
    container.ContentSequence = ContentSequence(
        [
            CodeContentItem(
                name=codes.NORMALITY.coded(),
                value=normality(result).coded(),
                relationship_type=RelationshipTypeValues.CONTAINS,
            ),
            _text(codes.SUMMARY, summary(result)),
            *critical_flags(result),
            *(_text(codes.COMMENT, text) for text in comments),
        ]
    )
    return container


def normality(result: StudyResult) -> codes.Concept:
    """CID 222 value of the study: Abnormal, Normal or Normality Undetermined."""
    if not result.analysed:
        return codes.NORMALITY_UNDETERMINED
    if any(image.present for image in result.images):
        return codes.ABNORMAL
    return codes.NORMAL


def summary(result: StudyResult) -> str:
    """One line for the reader: the findings above threshold per image, or that there are none."""
    if result.failure:
        return f"{ANALYSIS_FAILED} ({result.failure})."
    if not result.analysed:
        return NOT_ANALYSED
    present = [
        f"{finding.label.replace('_', ' ')} (image {number}, probability "
        f"{finding.probability:.3f} >= {finding.threshold:.3f})"
        for number, image in enumerate(result.images, start=1)
        for finding in sorted(image.present, key=lambda f: -f.probability)
    ]
    read = len(result.images[0].findings)
    scope = f"{read} findings read in {len(result.images)} image(s)"
    if not present:
        return f"{NO_FINDING_ABOVE_THRESHOLD} ({scope})."
    return f"Findings above threshold ({scope}): {'; '.join(present)}."


def critical_flags(result: StudyResult) -> list[CodeContentItem | TextContentItem]:
    """The flag of a study with a critical finding: per label at or above its critical
    threshold, Critical finding = the finding code, then one Comment naming them; empty when
    no finding is."""
    hits = result.critical_hits
    if not hits:
        return []
    numbers = {image.sop_instance_uid: n for n, image in enumerate(result.images, start=1)}
    flags: list[CodeContentItem | TextContentItem] = [
        CodeContentItem(
            name=codes.CRITICAL_FINDING.coded(),
            value=codes.finding_code(finding.label),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        for _, finding in hits
    ]
    described = "; ".join(
        f"{finding.label.replace('_', ' ')} (image {numbers[image.sop_instance_uid]}, probability "
        f"{finding.probability:.3f} >= critical threshold {result.critical[finding.label]:.3f})"
        for image, finding in hits
    )
    flags.append(_text(codes.COMMENT, f"{CRITICAL_FLAGGED}: {described}."))
    return flags


def _text(name: codes.Concept, value: str) -> TextContentItem:
    return TextContentItem(
        name=name.coded(), value=value, relationship_type=RelationshipTypeValues.CONTAINS
    )
