"""The Grad-CAM explanation of one radiograph as RGB Secondary Captures, annotations burned in.

Which findings a destination's SCs show (`ScFindings`, the per-destination setting
`sc_findings`):

- "present": one SC per analysed image; the heatmap is the maximum of the maps of the findings
  at or above threshold, the text lists those findings with their probabilities (or "No finding
  above threshold");
- "all": as "present", and the text also lists every finding below threshold with its
  probability (the heatmap still shows only findings above threshold: a map of a finding the
  model did not find would mislead);
- "per_finding": one SC per finding above threshold, each with the heatmap of that finding only;
  an image without any gets the single "No finding above threshold" SC.

The picture itself is drawn by `structured_reports.overlay`. Every UID is a pure function of the
source image, the model version, the view and what its text states (findings and probabilities
as printed), never of the heatmap's pixels: a map can differ in the last grey level with the
batch an image was analysed in, and that must not make an unchanged result a new instance. The
node keeps the first encoding of each UID and sends those bytes again (`dicom_node.pipeline`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from highdicom.sc import SCImage
from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

from structured_reports.equipment import (
    apply_general_equipment,
    apply_series_datetime,
    contributing_equipment,
    disclaimer,
)
from structured_reports.evidence import RESULT_CHARACTER_SET, evidence_header
from structured_reports.overlay import MAP_LOW, render_overlay
from structured_reports.results import (
    FindingResult,
    ImageResult,
    ModelIdentity,
    ScFindings,
    derive_uid,
)

SERIES_DESCRIPTION = "AI Grad-CAM (not for diagnostic use)"
_SERIES_DESCRIPTIONS: dict[ScFindings, str] = {
    "present": SERIES_DESCRIPTION,
    "all": "AI Grad-CAM, all findings (not for diagnostic use)",
    "per_finding": "AI Grad-CAM per finding (not for diagnostic use)",
}
NO_FINDING_TEXT = "No finding above threshold"
_ORIENTATIONS = frozenset("APRLHF")


@dataclass(frozen=True, kw_only=True, slots=True)
class ScView:
    """One picture of an image: which findings it is about (`focus`: one finding's label in
    "per_finding" mode, else None)."""

    findings: ScFindings = "present"
    focus: str | None = None


def sc_views(image: ImageResult, findings: ScFindings = "present") -> list[ScView]:
    """The SCs an image gets under `findings` (see module docstring)."""
    if findings == "per_finding" and image.present:
        ranked = sorted(image.present, key=lambda f: (-f.probability, f.label))
        return [ScView(findings="per_finding", focus=f.label) for f in ranked]
    return [ScView(findings=findings)]


def build_gradcam_scs(
    image: ImageResult,
    model: ModelIdentity,
    *,
    findings: ScFindings = "present",
    series_number: int = 9902,
    first_instance_number: int = 1,
) -> list[Dataset]:
    """Every SC of `image` under `findings`, numbered from `first_instance_number`."""
    return [
        build_gradcam_sc(
            image,
            model,
            view=view,
            series_number=series_number,
            instance_number=first_instance_number + offset,
        )
        for offset, view in enumerate(sc_views(image, findings))
    ]


def build_gradcam_sc(
    image: ImageResult,
    model: ModelIdentity,
    *,
    view: ScView | None = None,
    series_number: int = 9902,
    instance_number: int = 1,
    uid: str | None = None,
) -> Dataset:
    """Encode one Grad-CAM picture of `image` as a Secondary Capture of the source's study
    (SOP Instance UID `uid`, by default `sc_instance_uid`).

    Patient and study attributes are copied by highdicom from the source header
    (`structured_reports.evidence`); a lossy source makes a lossy SC (Lossy Image Compression).
    """
    view = view or ScView()
    source = evidence_header(image.source)
    orientation = _patient_orientation(source)
    pixels = render_overlay(
        image,
        model,
        lines=annotation_lines(image, model, view),
        heatmap_labels=[view.focus] if view.focus else [f.label for f in image.present],
    )
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=sc_series_uid(image, model, view.findings),
        series_number=series_number,
        sop_instance_uid=uid or sc_instance_uid(image, model, view),
        instance_number=instance_number,
        manufacturer=model.manufacturer,
        # highdicom wants an orientation for the PATIENT coordinate system; see below if unknown
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(model)],
        specific_character_set=RESULT_CHARACTER_SET,
    )
    if orientation is None:  # Type 2C: present but empty when the source does not say
        del sc.PatientOrientation
        sc.add_new("PatientOrientation", "CS", None)
    # A chest is not paired: with the body part stated, Laterality (Type 2C) is rightly absent.
    sc.BodyPartExamined = image.source.get("BodyPartExamined") or "CHEST"
    if source.get("StudyDescription"):
        sc.StudyDescription = source.StudyDescription
    _describe_derivation(sc, image, model, view)
    _carry_lossy_compression(sc, image.source)
    apply_general_equipment(sc, model)
    apply_series_datetime(sc)
    return sc


def sc_series_uid(
    image: ImageResult, model: ModelIdentity, findings: ScFindings = "present"
) -> str:
    """One Grad-CAM series per study, model version and choice of findings."""
    extra = () if findings == "present" else (findings,)
    return derive_uid("sc-series", str(image.source.StudyInstanceUID), model.device_uid, *extra)


def sc_instance_uid(
    image: ImageResult, model: ModelIdentity, view: ScView | None = None, *, salt: str = ""
) -> str:
    """Changes with the source image, the model version, the view and what the picture states
    (its text: findings above threshold, probabilities as printed, thresholds); `salt` makes a
    new UID for a picture that states the same as one that was withdrawn."""
    view = view or ScView()
    extra = () if view == ScView() else (view.findings, view.focus or "")
    stated = hashlib.sha256("\n".join(annotation_lines(image, model, view)).encode()).hexdigest()
    heatmaps = ",".join(sorted(image.maps))
    parts = [image.sop_instance_uid, model.device_uid, stated, heatmaps, *extra]
    return derive_uid("sc", *parts, *((salt,) if salt else ()))


def annotation_lines(
    image: ImageResult, model: ModelIdentity, view: ScView | None = None
) -> list[str]:
    """The text under the picture: the findings (see module docstring), model, how to read it."""
    view = view or ScView()
    present = _ranked(image.present)
    if view.focus is not None:
        [focus] = [f for f in image.findings if f.label == view.focus]
        others = [f for f in present if f.label != view.focus]
        lines = [f"Heatmap of {_named(focus)} (threshold {focus.threshold:.2f})"]
        if others:
            lines.append(f"Also above threshold: {_listed(others)}")
    else:
        lines = [f"Findings above threshold: {_listed(present)}" if present else NO_FINDING_TEXT]
        below = _ranked([f for f in image.findings if not f.present])
        if view.findings == "all" and below:
            lines.append(f"Below threshold: {_listed(below)}")
    heatmap = f"Heatmap: Grad-CAM, shown from {MAP_LOW:g} (0 = blue, 1 = red)"
    return [*lines, f"Model: {model.label}", heatmap]


def _ranked(findings: tuple[FindingResult, ...] | list[FindingResult]) -> list[FindingResult]:
    return sorted(findings, key=lambda f: (-f.probability, f.label))


def _named(finding: FindingResult) -> str:
    return f"{finding.label.replace('_', ' ')} {finding.probability:.2f}"


def _listed(findings: list[FindingResult]) -> str:
    return ", ".join(_named(f) for f in findings)


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    values = [str(v) for v in (source.get("PatientOrientation") or [])]
    if len(values) == 2 and all(v in _ORIENTATIONS for v in values):
        return values[0], values[1]
    return None


# Lossy transfer syntaxes and the Lossy Image Compression Method (PS3.3 C.7.6.1.1.5) they imply.
_LOSSY_METHODS = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEG2000: "ISO_15444_1",
    JPEGLSNearLossless: "ISO_14495_1",
}


def _carry_lossy_compression(sc: Dataset, source: Dataset) -> None:
    """An SC made from pixels that were once lossy compressed says so (PS3.3 C.7.6.1.1.5): what
    the source states, else what its transfer syntax implies."""
    syntax = getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", None)
    if str(source.get("LossyImageCompression", "")) == "01":
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if source.get(keyword):
                setattr(sc, keyword, source[keyword].value)
    elif syntax in _LOSSY_METHODS:
        sc.LossyImageCompression = "01"
        sc.LossyImageCompressionMethod = _LOSSY_METHODS[syntax]


def _describe_derivation(
    sc: Dataset, image: ImageResult, model: ModelIdentity, view: ScView
) -> None:
    """The attributes that say what this picture is and where it came from."""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = _SERIES_DESCRIPTIONS[view.findings]
    about = f" of {view.focus.replace('_', ' ')}" if view.focus else ""
    sc.DerivationDescription = (
        f"Grad-CAM heatmap{about} of {model.label} blended over the radiograph as displayed; "
        f"findings, model and '{disclaimer(model)}' burned in"
    )[:1024]
    sc.ImageComments = disclaimer(model)
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.source.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.sop_instance_uid
    sc.SourceImageSequence = [reference]
