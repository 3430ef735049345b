"""The log's patient-data filter on what libraries print: the warnings that quote the values they
object to, and dataset dumps of the patient module."""

from __future__ import annotations

import logging

import pytest

from dicom_node.log import node_formatter


def _render(logger: str, message: str, fmt: str) -> str:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, (), None)
    return node_formatter(fmt).format(record)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_library_warning_quoting_a_patient_name_is_redacted(fmt: str) -> None:
    """highdicom's person-name warning, as logging.captureWarnings routes it (logger
    py.warnings), keeps its words and loses the quoted name."""
    text = _render(
        "py.warnings",
        'UserWarning: The string "Quimby" is unlikely to represent the intended person name',
        fmt,
    )
    assert "unlikely to represent the intended person name" in text
    assert "Quimby" not in text


def test_a_dump_of_the_patient_module_loses_its_values() -> None:
    """Any logger's line holding a (0010,xxxx) element keeps the tag and loses the value."""
    text = _render("pynetdicom", "(0010,0020) Patient ID LO: 'ZX-5521-PID'", "text")
    assert "(0010,0020)" in text and "ZX-5521-PID" not in text
