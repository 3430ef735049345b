"""The curated code table: every model label is coded, every SNOMED CT id is well formed, every
entry names its source, and the rejected public codes stay rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from structured_reports import codes

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent for p in (REPO / "models").glob("*/configs/metadata.json"))
ALL_CONCEPTS = [
    *codes.FINDING_CODES.values(),
    *(value for value in vars(codes).values() if isinstance(value, codes.Concept)),
]


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_every_label_of_every_model_bundle_maps_to_a_code(bundle: Path) -> None:
    """Each label a bundle in models/ predicts has a coded concept with a named source."""
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    labels = metadata["dicom_node"]["labels"]
    assert labels, "a bundle without labels"
    for label in labels:
        concept = codes.finding_code(label)
        assert concept.scheme_designator in {"SCT", "RADLEX", codes.LOCAL_SCHEME}
        assert codes.FINDING_CODES[label].source


def test_snomed_ct_ids_pass_the_check_digit() -> None:
    """Every SCT code value of the table is a well-formed SNOMED CT identifier (Verhoeff)."""
    sct = [c for c in ALL_CONCEPTS if c.scheme == "SCT"]
    assert len(sct) >= 15
    assert all(codes.is_sctid(c.value) for c in sct)


@pytest.mark.parametrize("value", ["78381009", "78381001", "116244005", "95436001", "0123456"])
def test_ids_public_tables_give_for_pleural_thickening_are_not_identifiers(value: str) -> None:
    """The SNOMED CT ids public repositories give for Pleural_Thickening (and a typo of
    95436008, Lung consolidation) fail the check digit, so they can never enter the table."""
    assert not codes.is_sctid(value)
    with pytest.raises(ValueError, match="check digit"):
        codes.Concept(value=value, scheme="SCT", meaning="x", source="a public table")


def test_well_known_ids_pass_the_check_digit() -> None:
    """The check itself: ids cited in PS3.16 and HL7 value sets are accepted."""
    for value in ("2667000", "272519000", "52101004", "60046008", "195967001", "4468000"):
        assert codes.is_sctid(value), value


def test_pleural_thickening_is_the_declared_local_code() -> None:
    """Pleural_Thickening keeps the local scheme, which SRs declare (see codes docstring)."""
    concept = codes.FINDING_CODES["Pleural_Thickening"]
    assert concept.scheme == codes.LOCAL_SCHEME
    assert "HP:0031944" in concept.source and "OIFM_GMTS_015999" in concept.source
    [declared] = codes.coding_scheme_identification()
    assert declared.CodingSchemeDesignator == codes.LOCAL_SCHEME


def test_every_concept_names_its_source() -> None:
    """No coded concept of the module is without the source it was checked in."""
    assert all(c.source and c.meaning and c.value for c in ALL_CONCEPTS)


def test_docs_show_the_table_and_the_demo_results() -> None:
    """docs/results.md lists every coded finding as in codes.py and shows the demo SC and SR,
    which exist (the SR dump is a TID 1500 report)."""
    text = (REPO / "docs" / "results.md").read_text()
    for label, concept in codes.FINDING_CODES.items():
        assert f"| {label} | {concept.scheme} {concept.value} | {concept.meaning} |" in text
    assert "(demo-sc.png)" in text and "(demo-sr.txt)" in text
    assert (REPO / "docs" / "demo-sc.png").stat().st_size > 10_000
    assert "TID 1500" in (REPO / "docs" / "demo-sr.txt").read_text()
