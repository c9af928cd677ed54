"""docs/errors.md: every row names the tests that back it, and those tests exist (and every CLI case is a row)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "errors.md").read_text()
FULL = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([\w-]+)\])?`")
RELATIVE = re.compile(r"`::(test_\w+)(?:\[([\w-]+)\])?`")
SHORT = re.compile(r"`\[([\w-]+)\]`")


def _tests_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))


def test_every_referenced_test_exists() -> None:
    refs = FULL.findall(DOC)
    assert len(refs) > 20
    for path, name, case in refs:
        text = (ROOT / path).read_text()
        assert f"def {name}(" in text, f"{path}::{name}"
        if case:
            assert f'"{case}"' in text, f"{path}::{name}[{case}]"
    everything = _tests_text()
    for name, _case in RELATIVE.findall(DOC):
        assert f"def {name}(" in everything, name
    for case in SHORT.findall(DOC):
        assert f'("{case}"' in everything, case


def test_every_refused_cli_case_is_a_row() -> None:
    from tests.test_cli_hardening import CASES

    short = set(SHORT.findall(DOC)) | {case for _, _, case in FULL.findall(DOC)}
    assert {case for case, *_ in CASES} <= short
