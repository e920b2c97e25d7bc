"""Files: atomic writes (a reader sees the old content or the new, never half of either), sizes and hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path, tag: str = "tmp") -> Path:
    """A unique hidden sibling of `path` (.NAME.tmp-XXXXXXXX): same file system, so renaming it is atomic. NAME is
    cut to 32 characters, so that the temporary of a name the file system accepts is accepted too."""
    return path.with_name(f".{path.name[:32]}.{tag}-{uuid.uuid4().hex[:8]}")


def replace_file(tmp: Path, path: Path) -> None:
    """Flush the finished file `tmp` to disk and rename it over `path` in one atomic step."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: str | os.PathLike, tmp: Path | None = None):
    """Open a binary file whose content replaces `path` when the block ends: written under `tmp` (default a
    unique sibling), flushed and renamed, so readers never see a half-written file. On any exception (Ctrl-C,
    SIGTERM, a full disk) the temporary file is removed and `path` keeps its old content."""
    path = Path(path)
    tmp = tmp or temp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
        replace_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_folder(tmp: Path, path: Path) -> None:
    """Swap the finished folder `tmp` in for `path`: the old folder is renamed aside, the new one renamed in, then
    the old one deleted, so at no moment is neither on disk (a crash between the renames leaves the old one as
    .NAME.old-*). Deleting first, then renaming, would lose both to a crash in between."""
    old = temp_name(path, "old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a fresh (not yet created) temporary folder path to build `path`'s new content in; when the block ends
    it replaces `path` (replace_folder). On any exception it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes in a file or under a folder; files that vanish while we look (a worker clearing .tmp) count as 0."""
    if os.path.isfile(path):
        return os.stat(path).st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total
