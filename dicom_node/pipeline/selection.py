"""Select: which images of a study the model may read (frontal chest CR/DX). Every other image
gets a reason, recorded as a skip; nothing is dropped silently."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

RADIOGRAPH_CLASSES = frozenset(
    {
        str(ComputedRadiographyImageStorage),
        str(DigitalXRayImageStorageForPresentation),
        str(DigitalXRayImageStorageForProcessing),
    }
)
FRONTAL_VIEWS = frozenset({"PA", "AP"})
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAX")


def skip_reason(ds: Dataset, *, require_view_position: bool = True) -> str | None:
    """None when `ds` is a frontal chest radiograph the model may read, else the reason why not."""
    for check in (_sop_class, _modality, _pixels, _body_part):
        reason = check(ds)
        if reason:
            return reason
    return _view(ds, require_view_position)


def _sop_class(ds: Dataset) -> str | None:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in RADIOGRAPH_CLASSES:
        return f"SOP class {sop_class or '(none)'} is not CR or DX image storage"
    return None


def _modality(ds: Dataset) -> str | None:
    modality = str(ds.get("Modality", ""))
    return None if modality in {"CR", "DX"} else f"modality {modality or '(none)'} is not CR or DX"


def _pixels(ds: Dataset) -> str | None:
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame images are not supported"
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return "colour images are not supported (radiographs are greyscale)"
    return None


def _body_part(ds: Dataset) -> str | None:
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if body_part:
        return (
            None
            if any(w in body_part for w in CHEST_WORDS)
            else f"body part {body_part} is not chest"
        )
    described = " ".join(
        str(ds.get(k, "")) for k in ("StudyDescription", "SeriesDescription", "ProtocolName")
    ).upper()
    return None if any(w in described for w in CHEST_WORDS) else "body part not stated as chest"


def _view(ds: Dataset, require_view_position: bool) -> str | None:
    view = str(ds.get("ViewPosition", "")).upper()
    if view in FRONTAL_VIEWS:
        return None
    if view:
        return f"view position {view} is not frontal (PA or AP)"
    return "view position not stated (PA or AP required)" if require_view_position else None
