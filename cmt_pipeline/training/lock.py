"""A training run folder belongs to its trainer. A trainer writes only into an empty (or new) folder or a run
folder (one holding RUN/.lock, a run's config.json or checkpoints/): never among unrelated files, which its
student/ or teacher/ swap would replace. And one trainer at a time: RUN/.lock is held by the running trainer's main
process, so two commands with one --out cannot interleave their logs, evaluations and checkpoints.

The exclusion is an flock on the file: the kernel releases it when its process dies, however it dies (SIGKILL
included), so a dead trainer's lock is recognised without guessing from pids. The file's content (pid, host,
start time) only names the holder: in the refusal, and in the note when a later run takes over the lock of a
trainer that died holding it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import CMTError

LOCK = ".lock"


@contextmanager
def run_lock(run: Path):
    """Hold RUN/.lock for the block (creating RUN); CMTError when RUN holds other files or another live process
    holds the lock. A RUN this creates and leaves empty (a refused run) is removed again."""
    path, created = run / LOCK, not run.exists()
    if not created and not is_run(run) and any(run.iterdir()):
        raise CMTError(f"--out {run} is not empty and is not a training run (a trainer never writes into other "
                       "folders); choose a new or empty --out")
    run.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_text(fd)
            os.close(fd)
            raise CMTError(f"{run} is in use by another trainer ({holder}); wait for it to finish or choose another "
                           "--out") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder released and removed the file between our open and flock: open the new one
    if previous := holder_text(fd):
        print(f"note: {run} was locked by a trainer that ended without releasing it ({previous}); taking it over",
              file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created and not any(run.iterdir()):
            run.rmdir()


def is_run(run: Path) -> bool:
    """Whether `run` is a training run folder: a trainer's lock file, a run's config.json or its checkpoints."""
    return any((run / name).exists() for name in (LOCK, "config.json", "checkpoints"))


def holder_text(fd: int) -> str:
    """'pid P on host H since T' from the lock file's content; '' when it is empty (a fresh lock)."""
    raw = os.pread(fd, 4096, 0)
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on host {h['host']} since {h['started']}"
    except (ValueError, TypeError, KeyError):
        return f"unreadable lock record {raw[:60]!r}" if raw else ""


def holds_run_folder(stage):
    """Decorator of a stage function `stage(cfg, ...)`: its main process holds cfg.out's lock while it runs."""

    @functools.wraps(stage)
    def locked(cfg, *args, **kwargs):
        from accelerate import PartialState

        if not PartialState(cpu=cfg.device == "cpu").is_main_process:
            return stage(cfg, *args, **kwargs)
        with run_lock(Path(cfg.out)):
            return stage(cfg, *args, **kwargs)

    return locked
