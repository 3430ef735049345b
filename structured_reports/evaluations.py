"""TID 1500 row 12, Qualitative Evaluations of the whole study: the summary a reader sees first
(Normality and a one-line Summary), the disclaimer, and why each image was not analysed.

Normality (121402, DCM) takes a CID 222 value: Abnormal when any finding of any analysed image is
at or above its threshold, Normal when none is, Normality Undetermined when no image was
analysed. It speaks only for the findings the model reads; the Summary text says which.
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


def _text(name: codes.Concept, value: str) -> TextContentItem:
    return TextContentItem(
        name=name.coded(), value=value, relationship_type=RelationshipTypeValues.CONTAINS
    )
