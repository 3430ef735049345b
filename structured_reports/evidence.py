"""The source headers as the evidence a result is built from: the patient and study attributes a
result copies, as the source has them, fit for the result's IOD.

Real modalities omit Type 2 attributes (an Agfa CR without Study ID, a DX without Accession
Number or Patient's Sex) and write text in ISO 2022 character sets (`\\ISO 2022 IR 87`,
`\\ISO 2022 IR 149`). The result copies what is there; what is absent becomes present and empty,
as Type 2 allows in the SR, SC and KOS. Every text value is decoded with the source's character
set and the result is written in UTF-8 (`ISO_IR 192`), which holds every repertoire.
"""

from __future__ import annotations

import contextlib
import copy

from pydicom import Dataset

RESULT_CHARACTER_SET = "ISO_IR 192"
# Type 2 in the Patient and General Study modules of every result IOD (PS3.3 C.7.1.1, C.7.2.1).
TYPE_2 = {
    "PatientName": "PN",
    "PatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "ReferringPhysicianName": "PN",
    "StudyID": "SH",
    "AccessionNumber": "SH",
}
_NOT_COPIED = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})


def evidence_header(source: Dataset) -> Dataset:
    """A copy of `source` (without pixel data) whose text is decoded and declared `ISO_IR 192`,
    and whose Type 2 patient and study attributes are all present: empty where the source lacks
    them or holds a value that cannot be read."""
    header = Dataset()
    for tag in list(source.keys()):  # each converted with the source's character set
        try:
            element = source[tag]
        except (ValueError, TypeError, LookupError, KeyError):  # a value pydicom cannot read
            continue
        if element.keyword not in _NOT_COPIED:
            header.add(copy.deepcopy(element))  # never the source's own element objects
    with contextlib.suppress(ValueError, LookupError):  # unknown character set: values as read
        header.decode()
    header.SpecificCharacterSet = RESULT_CHARACTER_SET
    for keyword, vr in TYPE_2.items():
        if keyword not in header or not _readable(header, keyword):
            header.add_new(keyword, vr, None)
    return header


def _readable(header: Dataset, keyword: str) -> bool:
    try:
        str(header[keyword].value)
    except (ValueError, TypeError, LookupError):
        return False
    return True
