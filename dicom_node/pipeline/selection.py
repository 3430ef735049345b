"""Select: which images of a study a model may read, by its scope (`domain.ModelScope`; the
chest radiograph model's: frontal chest CR and DX For Presentation). Every other image gets a
reason, recorded as a skip; nothing is dropped silently.

The view is read from View Position (0018,5101) or, where a modality states it only as a code,
from the View Code Sequence (0054,0220; CID 4010 DX View). DX For Processing images are skipped:
their pixels are the detector's raw values before the modality's image processing, not meant for
viewing (PS3.3 C.8.11.1.1.1), and a model trained on displayed radiographs must not read them;
the modality sends the For Presentation image of the same exposure, which is analysed.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import DigitalXRayImageStorageForProcessing

from dicom_node.domain import ModelScope

CXR_SCOPE = ModelScope()
# CID 4010 DX View: SNOMED CT and the legacy SNOMED RT codes of the frontal and lateral views.
VIEW_CODES = {
    ("SCT", "272479007"): "PA",
    ("SRT", "R-10214"): "PA",
    ("SCT", "399348003"): "AP",
    ("SRT", "R-10206"): "AP",
    ("SCT", "399173006"): "LL",
    ("SRT", "R-10232"): "LL",
    ("SCT", "399198007"): "RL",
    ("SRT", "R-10236"): "RL",
}


def is_image(ds: Dataset) -> bool:
    """True for an image (it has rows and columns), false for presentation states, key object
    selections, reports and documents."""
    return "Rows" in ds and "Columns" in ds


def skip_reason(
    ds: Dataset, scope: ModelScope = CXR_SCOPE, *, require_view_position: bool = True
) -> str | None:
    """None when `ds` is an image of the model's `scope` (by default a frontal chest
    radiograph), else the reason why not."""
    for check in (_sop_class, _modality, _pixels, _body_part):
        reason = check(ds, scope)
        if reason:
            return reason
    return _view(ds, scope, require_view_position)


def stated_view(ds: Dataset) -> str:
    """The view as View Position states it, else as the View Code Sequence codes it ('' when
    neither says)."""
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position:
        return position
    for item in ds.get("ViewCodeSequence") or []:
        scheme, value = str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeValue", ""))
        if (scheme, value) in VIEW_CODES:
            return VIEW_CODES[(scheme, value)]
        meaning = str(item.get("CodeMeaning", "") or value)
        return f"'{meaning}'"
    return ""


def _sop_class(ds: Dataset, scope: ModelScope) -> str | None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in scope.sop_classes:
        return None
    if sop_class == str(DigitalXRayImageStorageForProcessing):
        return (
            "DX For Processing: raw detector values not meant for display; the For Presentation "
            "image of the exposure is the one analysed"
        )
    if scope == CXR_SCOPE:
        return f"SOP class {sop_class or '(none)'} is not CR or DX image storage"
    return f"SOP class {sop_class or '(none)'} is not one the model reads"


def _modality(ds: Dataset, scope: ModelScope) -> str | None:
    modality = str(ds.get("Modality", ""))
    if modality in scope.modalities:
        return None
    return f"modality {modality or '(none)'} is not {' or '.join(scope.modalities)}"


def _pixels(ds: Dataset, scope: ModelScope) -> str | None:
    if _integer(ds, "NumberOfFrames", 1) > 1:
        return "multi-frame images are not supported"
    if _integer(ds, "SamplesPerPixel", 1) != 1:
        return "colour images are not supported (radiographs are greyscale)"
    return None


def _integer(ds: Dataset, keyword: str, default: int) -> int:
    """An IS/US value, or `default` when absent or empty; ValueError naming it when unreadable."""
    value = ds.get(keyword)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{keyword} {value!r} is not a number") from exc


def _body_part(ds: Dataset, scope: ModelScope) -> str | None:
    words, name = scope.body_parts, scope.body_parts[0].lower() if scope.body_parts else ""
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if body_part:
        return (
            None if any(w in body_part for w in words) else f"body part {body_part} is not {name}"
        )
    described = " ".join(
        str(ds.get(k, "")) for k in ("StudyDescription", "SeriesDescription", "ProtocolName")
    ).upper()
    return None if any(w in described for w in words) else f"body part not stated as {name}"


def _view(ds: Dataset, scope: ModelScope, require_view_position: bool) -> str | None:
    if not scope.views:
        return None
    view = stated_view(ds)
    if view in scope.views:
        return None
    wanted = " or ".join(scope.views)
    kind = "frontal " if scope.views == CXR_SCOPE.views else ""
    if view:
        return f"view position {view} is not {kind}({wanted})"
    if require_view_position:
        return f"view position not stated (View Position or View Code Sequence: {wanted} required)"
    return None
