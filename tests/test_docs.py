"""Docs that must match the code: the CLI reference is the commands' own --help."""

from pathlib import Path

from cli.reference import reference


def test_cli_reference_is_current():
    doc = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert doc.read_text() == reference(), "docs/cli.md is stale: run `python -m cli.reference > docs/cli.md`"
