"""Sections of a markdown file that programs rewrite: each benchmark writes its results into docs/results.md
between `<!-- name -->` and `<!-- /name -->`, so a rerun replaces its own section and nothing else (a heading
is no boundary: a section may hold several, and the text around it belongs to others)."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write_bytes


def replace_section(doc: str, name: str, text: str) -> str:
    """`doc` with the section `name` holding `text`; appended when `doc` has no such section."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    i = doc.find(start)
    j = doc.find(end, i) if i >= 0 else -1
    if j >= 0:
        return doc[:i] + block + doc[j + len(end):]
    return (doc.rstrip("\n") + "\n\n" if doc.strip() else "") + block + "\n"


def write_section(path: str | Path, name: str, text: str) -> None:
    """Rewrite the section `name` of the markdown file `path` (created if missing), atomically."""
    path = Path(path)
    doc = path.read_text() if path.exists() else ""
    atomic_write_bytes(path, replace_section(doc, name, text).encode())
