"""files.py's atomic writes: readers see the old content or the new, never a half-written file or no folder at all."""

from __future__ import annotations

import pytest

from cmt_pipeline.files import atomic_file, atomic_folder, atomic_write_bytes


def test_atomic_file_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_an_exception_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_folder_swaps_in_the_new_folder(tmp_path):
    out = tmp_path / "model"
    for content in ("old", "new"):
        with atomic_folder(out) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(content)
    assert (out / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the old one deleted once the new one is in


def test_an_exception_mid_folder_keeps_the_old_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text("half")
            raise KeyboardInterrupt
    assert (out / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_the_folder_swap_never_leaves_neither(tmp_path, monkeypatch):
    """A crash between the two renames: the old folder survives under its aside name, never lost."""
    import os

    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("old")
    real, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(OSError):
        with atomic_folder(out) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text("new")
    aside = [p for p in tmp_path.iterdir() if ".old-" in p.name]
    assert len(aside) == 1 and (aside[0] / "weights").read_text() == "old"
