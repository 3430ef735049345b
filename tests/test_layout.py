"""The shape of the code: subpackages by concern whose imports run one way (import-linter's
contracts in pyproject.toml: layers, the serving path free of training and synthetic code, no
cycles), a small top level, short modules, and a docstring on every subpackage."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dicom_node"
MAX_TOP_LEVEL_MODULES = 10
MAX_MODULE_LINES = 350


def test_import_contracts_hold() -> None:
    """`lint-imports` keeps every contract: a layer importing one above it, the serving path
    importing training or synthetic code, or two modules importing each other fails here."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], check=False, capture_output=True, text=True, cwd=PACKAGE.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_top_level_holds_only_the_process_level() -> None:
    """At most about ten modules at the top of dicom_node; the rest live in subpackages."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_module_is_short(path: Path) -> None:
    """No module over about 350 lines."""
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize(
    "init",
    sorted(p / "__init__.py" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()),
    ids=lambda p: p.parent.name,
)
def test_subpackage_says_what_lives_there(init: Path) -> None:
    """Each subpackage's docstring says what it holds and what it may import."""
    docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "import" in docstring.lower(), f"{init}: say what the subpackage may import"
