"""The one curated table of coded concepts the encoders use, each with the source it was checked in.

Sources, cited by short name in each entry:

- "PS3.16": DICOM PS3.16 Content Mapping Resource, as generated into `pydicom.sr.codedict`
  (pydicom 3.0) and used by highdicom; the CID is named where the concept is in one.
- "SNOMED CT": SNOMED CT International Edition concept, cross-checked in the public mapping named
  in the entry (no terminology server is reachable from here: re-check on a release upgrade).
  Every SCT code value passes the SNOMED CT identifier check digit (Verhoeff), checked when this
  module is imported, so a mistyped or invented identifier cannot ship.

Public projects disagree on several of these; the choices and rejected alternatives are noted:

- Cardiomegaly: pydicom's codedict maps `SCT.Cardiomegaly` to 287272002, a code the same
  dictionary also names "Enlarged septal foramen of heart"; SNOMED CT 8186001 is used.
- Absent: PS3.16 CID 240/241 use 272519000 (the former 2667000 |Absent| is what HL7 FHIR value
  sets such as mCODE still use); DICOM's code is used because the SR is a DICOM object.
- NIH "Effusion" and "Edema" mean pleural effusion and pulmonary edema; NIH "Mass", "Nodule" and
  "Hernia" are not restricted to the lung, so morphologic concepts are used as PS3.16 CID 6104
  (Abnormal Opacity Finding or Feature) does for Mass and Nodule.
- Pleural_Thickening: a local code (scheme `99DCMNODE`, PS3.3 8.2: designators starting "99" are
  local), declared in the Coding Scheme Identification Sequence of every SR that uses it. Searched
  (2026): DICOM PS3.16 has no pleural thickening concept (pydicom codedict); the Open Imaging
  Finding Model for it (openimagingdata/findingmodels `defs/pleural_thickening.fm.json`,
  OIFM_GMTS_015999) indexes it only by RadLex Gamuts 15999, no SNOMED CT or RadLex concept; HPO
  HP:0031944 "Pleural thickening" carries no SNOMED CT cross-reference; the SNOMED CT ids public
  chest X-ray AI repositories give for it disagree, and 78381009, 78381001 and 116244005 fail the
  SNOMED CT check digit (they are not identifiers at all), while 4468000 is well formed but its
  meaning could not be verified. Miscoding a finding is worse than a validator warning (dciodvfy:
  "Unrecognized defined term <99DCMNODE>"), so the local code stays until a terminology server
  confirms a concept.
- Study summary: 121402 "Normality" (PS3.16) = CID 222 Normal / Abnormal / Normality Undetermined,
  stated for the 14 findings the model reads, with a TEXT summary next to it.
- Critical finding (the flag of a study whose finding crossed a configured critical threshold):
  a local concept name (`99DCMNODE` CRITICAL-FINDING "Critical finding") whose value is the
  finding's own code. Searched (2026, pydicom 3.0 codedict of PS3.16): no DCM or SCT concept
  name for a critical result; LOINC 73568-8 "Communication of Critical Results" is a report
  section heading (CID 7001) for the narrative of a communication, not a finding; CID 7035
  Actionable Finding Classification (RadLex RID49480-RID49482, ACR categories 1-3) grades the
  urgency of a finding a radiologist made, which a threshold on a model's output cannot claim.
  DCM 121071 "Finding" alone would not tell the flag from any other finding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from highdicom.sr import CodedConcept
from pydicom import Dataset

LOCAL_SCHEME = "99DCMNODE"
LOCAL_SCHEME_NAME = "dicom-node local concepts"

NO_FINDING = "No Finding"


@dataclass(frozen=True, kw_only=True, slots=True)
class Concept:
    """One coded concept (code value, coding scheme designator, code meaning) and its source."""

    value: str
    scheme: str
    meaning: str
    source: str

    def __post_init__(self) -> None:
        if self.scheme == "SCT" and not is_sctid(self.value):
            raise ValueError(
                f"{self.value!r} ({self.meaning}) is not a SNOMED CT identifier: its check digit "
                "fails; copy the concept id again from a terminology browser"
            )

    def coded(self) -> CodedConcept:
        """A new highdicom `CodedConcept` (a Dataset, so never shared between objects)."""
        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


# Verhoeff's dihedral-group tables, as SNOMED CT uses them for the last digit of an identifier.
_VERHOEFF_STEP = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)


def _dihedral(j: int, k: int) -> int:
    """Product j * k in the dihedral group D5 (0-4 rotations, 5-9 reflections)."""
    if j < 5:
        return (j + k) % 5 if k < 5 else (j + k - 5) % 5 + 5
    return (j - 5 - k) % 5 + 5 if k < 5 else (j - k) % 5


def _permute(position: int, digit: int) -> int:
    for _ in range(position % 8):
        digit = _VERHOEFF_STEP[digit]
    return digit


def is_sctid(value: str) -> bool:
    """True when `value` is a well-formed SNOMED CT identifier: 6 to 18 digits, no leading zero,
    and a valid Verhoeff check digit (SNOMED CT Technical Implementation Guide, SCTID)."""
    if not (value.isdigit() and value.isascii() and 6 <= len(value) <= 18) or value[0] == "0":
        return False
    check = 0
    for position, digit in enumerate(reversed(value)):
        check = _dihedral(check, _permute(position, int(digit)))
    return check == 0


def _sct(value: str, meaning: str, source: str) -> Concept:
    return Concept(value=value, scheme="SCT", meaning=meaning, source=source)


def _dcm(value: str, meaning: str, source: str) -> Concept:
    return Concept(value=value, scheme="DCM", meaning=meaning, source=source)


# The 14 NIH ChestX-ray14 labels and "No Finding", keyed by the dataset's exact label strings.
_FINDINGS: dict[str, Concept] = {
    "Atelectasis": _sct(
        "46621007",
        "Atelectasis",
        "SNOMED CT |Atelectasis (disorder)|; parent of PS3.16 CID 6103's 40779009 (plate-like)",
    ),
    "Cardiomegaly": _sct(
        "8186001",
        "Cardiomegaly",
        "SNOMED CT |Cardiomegaly (disorder)|; not pydicom's 287272002 (see module docstring)",
    ),
    "Effusion": _sct(
        "60046008",
        "Pleural effusion",
        "PS3.16 (pydicom codes.SCT.PleuralEffusion, CID 645/8134)",
    ),
    "Infiltration": _sct(
        "409609008",
        "Radiologic infiltrate of lung",
        "SNOMED CT, as listed by NLM UMLS (SNOMEDCT_US 409609008); alternative DCM 112121 CID 6104",
    ),
    "Mass": _sct("4147007", "Mass", "PS3.16 CID 6104 Abnormal Opacity Finding or Feature"),
    "Nodule": _sct("27925004", "Nodule", "PS3.16 CID 6104 Abnormal Opacity Finding or Feature"),
    "Pneumonia": _sct(
        "233604007",
        "Pneumonia",
        "SNOMED CT |Pneumonia (disorder)|; OHDSI Athena concept 255848",
    ),
    "Pneumothorax": _sct(
        "36118008",
        "Pneumothorax",
        "PS3.16 CID 6105 Abnormal Lucency Finding or Feature",
    ),
    "Consolidation": _sct(
        "95436008",
        "Lung consolidation",
        "SNOMED CT |Lung consolidation (disorder)|; OHDSI Athena concept 4318404; HL7 LT lung IG "
        "ValueSet incidental-finding",
    ),
    "Edema": _sct("19242006", "Pulmonary edema", "PS3.16 (pydicom codes.SCT.PulmonaryEdema)"),
    "Emphysema": _sct(
        "87433001",
        "Pulmonary emphysema",
        "SNOMED CT |Pulmonary emphysema (disorder)|; HL7 LT lung IG ValueSet incidental-finding",
    ),
    "Fibrosis": _sct(
        "51615001",
        "Fibrosis of lung",
        "SNOMED CT |Fibrosis of lung (disorder)|; MONDO:0002771 equivalent SCTID 51615001 (EBI "
        "OLS, EFO_0009448); HL7 FHIR displays 'Pulmonary fibrosis'",
    ),
    "Pleural_Thickening": Concept(
        value="PLEURAL-THICK",
        scheme=LOCAL_SCHEME,
        meaning="Pleural thickening",
        source=(
            "local code: no SNOMED CT/RadLex concept verifiable (OIFM_GMTS_015999 and HPO "
            "HP:0031944 carry none; public SCT ids fail the check digit): see module docstring"
        ),
    ),
    "Hernia": _sct(
        "414403008",
        "Hernia",
        "SNOMED CT |Herniated structure (morphologic abnormality)| (SNOMED hernia templates); "
        "NIH 'Hernia' is mostly, not only, hiatal hernia (84089009)",
    ),
    NO_FINDING: _sct("17621005", "Normal", "PS3.16 CID 222 Normality / CID 242"),
    # CheXpert's observations (dicom_node/training/chexpert.py) not spelt as an NIH label above.
    "Pleural Effusion": _sct(
        "60046008",
        "Pleural effusion",
        "PS3.16 (pydicom codes.SCT.PleuralEffusion, CID 645/8134); CheXpert's NIH 'Effusion'",
    ),
    "Lung Lesion": _sct(
        "52988006",
        "Lesion",
        "PS3.16 (pydicom codes.SCT.Lesion); CheXpert 'Lung Lesion' (mass or nodule) takes the "
        "morphologic concept, as NIH Mass and Nodule do",
    ),
    "Fracture": _sct(
        "125605004",
        "Fracture of bone",
        "SNOMED CT |Fracture of bone (disorder)|, the root of SNOMED International's template "
        "'Fracture of [bone structure] (disorder)'",
    ),
    "Enlarged Cardiomediastinum": Concept(
        value="ENL-CARDIOMED",
        scheme=LOCAL_SCHEME,
        meaning="Enlarged cardiomediastinum",
        source="local code: PS3.16 has no such concept; no SNOMED CT concept verifiable here",
    ),
    "Lung Opacity": Concept(
        value="LUNG-OPACITY",
        scheme=LOCAL_SCHEME,
        meaning="Lung opacity",
        source="local code: PS3.16 has opacity concepts of lens, cornea, vitreous and breast only",
    ),
    "Pleural Other": Concept(
        value="PLEURAL-OTHER",
        scheme=LOCAL_SCHEME,
        meaning="Other pleural abnormality",
        source="local code: CheXpert's remainder class (pleural thickening, fibrosis, "
        "calcification) has no single concept",
    ),
    "Support Devices": Concept(
        value="SUPPORT-DEVICES",
        scheme=LOCAL_SCHEME,
        meaning="Support devices",
        source="local code: CheXpert's class of tubes, lines and implanted devices; PS3.16 codes "
        "single devices (e.g. 26412008 Endotracheal tube), not the class",
    ),
}

FINDING_CODES: Mapping[str, Concept] = MappingProxyType(_FINDINGS)
"""Label (exact NIH ChestX-ray14 string) -> coded finding concept."""

# Document structure and values (TID 1500 / TID 1501 / TID 4019).
CHEST_RADIOGRAPH = _sct(
    "399208008",
    "Plain X-ray of chest",
    "SNOMED CT |Plain X-ray of chest (procedure)|; any views, unlike LOINC 36643-5 'XR Chest 2V'",
)
FINDING = _dcm("121071", "Finding", "PS3.16 (pydicom codes.DCM.Finding)")
PRESENCE = _dcm("121052", "Presence of property", "PS3.16 (pydicom codes.DCM.PresenceOfProperty)")
PRESENT = _sct("52101004", "Present", "PS3.16 CID 240 Present-Absent")
ABSENT = _sct("272519000", "Absent", "PS3.16 CID 240 Present-Absent (not FHIR's 2667000)")
PROBABILITY = _dcm("122157", "Probability", "PS3.16 (pydicom codes.DCM.Probability)")
UNIT_PROBABILITY = Concept(
    value="1",
    scheme="UCUM",
    meaning="no units",
    source="UCUM dimensionless unit; PS3.16 CID 7181 (pydicom codes.UCUM.NoUnits)",
)
ALGORITHM_FAMILY = _dcm(
    "123110",
    "Artificial Intelligence",
    "PS3.16 CID 7162, the CID TID 4019 names for Algorithm Family",
)
PROCESSING_EQUIPMENT = _dcm(
    "109102",
    "Processing Equipment",
    "PS3.16 CID 7005 Contributing Equipment Purposes of Reference (109103 is Modifying Equipment)",
)
COMMENT = _dcm("121106", "Comment", "PS3.16 (pydicom codes.DCM.Comment)")
SUMMARY = _dcm("121111", "Summary", "PS3.16 (pydicom codes.DCM.Summary)")
NORMALITY = _dcm("121402", "Normality", "PS3.16 (pydicom codes.DCM.Normality)")
NORMAL = _sct("17621005", "Normal", "PS3.16 CID 222 Normality")
ABNORMAL = _sct("263654008", "Abnormal", "PS3.16 CID 222 Normality")
NORMALITY_UNDETERMINED = _sct(
    "371934000", "Normality Undetermined", "PS3.16 CID 222 Normality (no image analysed)"
)
CRITICAL_FINDING = Concept(
    value="CRITICAL-FINDING",
    scheme=LOCAL_SCHEME,
    meaning="Critical finding",
    source=(
        "local code: PS3.16 has no concept name for a critical result (LOINC 73568-8 is a "
        "section heading, CID 7035 grades a radiologist's actionable finding): see module "
        "docstring"
    ),
)
QUALITATIVE_EVALUATIONS = Concept(
    value="C0034375",
    scheme="UMLS",
    meaning="Qualitative Evaluations",
    source="PS3.16 TID 1500 row 12",
)


def finding_code(label: str) -> CodedConcept:
    """The coded finding of an NIH ChestX-ray14 label, e.g. 'Effusion' -> SCT 60046008.

    Raises `KeyError` naming the known labels when `label` is not one of them (exact spelling).
    """
    try:
        concept = FINDING_CODES[label]
    except KeyError:
        known = ", ".join(sorted(FINDING_CODES))
        raise KeyError(
            f"no coded concept for finding label {label!r}; known labels (exact spelling): "
            f"{known}. Add the label to structured_reports/codes.py with a checked source."
        ) from None
    return concept.coded()


def coding_scheme_identification() -> list[Dataset]:
    """Items of the Coding Scheme Identification Sequence (0008,0110) declaring the local scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "dicom-node"
    return [item]
