"""The procedure an SR reports on (TID 1500 "Procedure reported", SR Performed Procedure Code)
and the orders it fulfils (Referenced Request Sequence, from the images' Request Attributes).

Taken from the source study where it says what was requested, in this order: the Requested
Procedure Code Sequence (0032,1064) at the top level of the images, then inside their Request
Attributes Sequence (0040,0275) items, then the General Study module's Procedure Code Sequence
(0008,1032); a chest radiograph (SNOMED CT 399208008) when none of them holds a usable code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from highdicom.sr import CodedConcept
from pydicom import Dataset

from structured_reports import codes

CodeItems = Callable[[Dataset], Iterable[Dataset]]


def procedure_codes(sources: Sequence[Dataset]) -> list[CodedConcept]:
    """The coded procedures of the first place (see module docstring) that holds usable codes in
    any source, each once; the chest radiograph code when there are none."""
    for items_of in (_requested, _requested_in_request_attributes, _procedure):
        found = _unique(_usable(item) for source in sources for item in items_of(source))
        if found:
            return found
    return [codes.CHEST_RADIOGRAPH.coded()]


def _requested(source: Dataset) -> Iterable[Dataset]:
    return source.get("RequestedProcedureCodeSequence") or []


def _requested_in_request_attributes(source: Dataset) -> Iterable[Dataset]:
    for request in source.get("RequestAttributesSequence") or []:
        yield from request.get("RequestedProcedureCodeSequence") or []


def _procedure(source: Dataset) -> Iterable[Dataset]:
    return source.get("ProcedureCodeSequence") or []


def _usable(item: Dataset) -> CodedConcept | None:
    """The item as a coded concept, or None when it lacks a value, scheme or meaning."""
    if not item.get("CodingSchemeDesignator") or not item.get("CodeMeaning"):
        return None
    if not any(item.get(k) for k in ("CodeValue", "LongCodeValue", "URNCodeValue")):
        return None
    try:
        return CodedConcept.from_dataset(item)
    except (AttributeError, TypeError, ValueError):  # malformed code item from the modality
        return None


def _unique(concepts: Iterable[CodedConcept | None]) -> list[CodedConcept]:
    seen: set[tuple[str, str]] = set()
    unique: list[CodedConcept] = []
    for concept in concepts:
        if concept is None:
            continue
        key = (str(concept.value), str(concept.scheme_designator))
        if key not in seen:
            seen.add(key)
            unique.append(concept)
    return unique


# Type 2 attributes of a Referenced Request Sequence item (PS3.3 C.17.2, SR Document General).
_REQUEST_TYPE_2 = (
    ("AccessionNumber", "SH"),
    ("PlacerOrderNumberImagingServiceRequest", "LO"),
    ("FillerOrderNumberImagingServiceRequest", "LO"),
    ("RequestedProcedureID", "SH"),
    ("RequestedProcedureDescription", "LO"),
)


def referenced_requests(sources: Sequence[Dataset]) -> list[Dataset]:
    """Referenced Request Sequence items for the orders the images were acquired for: one per
    distinct request of their Request Attributes Sequence (0040,0275); none without one."""
    items: list[Dataset] = []
    seen: set[tuple[str, str, str]] = set()
    for source in sources:
        for request in source.get("RequestAttributesSequence") or []:
            item = _request_item(source, request)
            key = (
                str(item.AccessionNumber),
                str(item.RequestedProcedureID),
                str(item.PlacerOrderNumberImagingServiceRequest),
            )
            if key not in seen:
                seen.add(key)
                items.append(item)
    return items


def _request_item(source: Dataset, request: Dataset) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = source.StudyInstanceUID
    item.ReferencedStudySequence = []
    for keyword, vr in _REQUEST_TYPE_2:
        value = request.get(keyword) or (
            source.get(keyword) if keyword == "AccessionNumber" else None
        )
        item.add_new(keyword, vr, str(value) if value else None)
    codes_ = [
        c for c in (_usable(c) for c in request.get("RequestedProcedureCodeSequence") or []) if c
    ]
    item.RequestedProcedureCodeSequence = codes_[:1]
    return item
