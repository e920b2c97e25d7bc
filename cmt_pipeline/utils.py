"""Small shared helpers: CMTError (from errors.py), atomic writes, hashing, seeding."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import CMTError


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


def hash_weights(h, module: torch.nn.Module) -> None:
    """Feed every parameter and buffer of `module`, by sorted name, into the hash `h`: a network's identity."""
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu()
        h.update(name.encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes())  # numpy has no bf16


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample `index` of a run seeded `seed` (no collisions across seeds)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@contextmanager
def seeded(seed: int):
    """Run the block on torch's CPU generator seeded `seed`, then restore it: for draws that take no generator
    (a module constructor's weight init), so seeding one build leaves everyone else's random stream alone."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


@contextmanager
def full_fp32():
    """TF32 off inside the block (or the decorated function), restored after: generation, sampling and evaluation
    then agree with a CPU run to fp32 precision, and nothing else in the process has its settings changed."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def resolve_device(device: str | None) -> torch.device:
    """'auto' picks CUDA when present; CMTError for CUDA asked for where there is none. Precision: full_fp32."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CMTError(f"--device {device} is not a device; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CMTError(f"--device {device} asked for CUDA but none is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CMTError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                           "use cuda:0 up to the last one")
    return dev


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux: MemAvailable; elsewhere the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def quiet_libraries():
    """diffusers' logged notices and Python warnings silenced while a model folder loads: a refusal must stay one
    line, and some notices mislead ("Defaulting to unsafe serialization" for a .bin that diffusers reads with
    torch.load(weights_only=True)). What matters reaches the user as the exception the loader raises."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # it logs a missing safetensors file as an error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def check_memory(option: str, count: int, item_bytes: int, what: str) -> None:
    """Refuse `option` = count when its `what` alone would take over a quarter of the memory available (a network's
    activations take several times more): a clear estimate before anything is allocated, not minutes of swapping."""
    need, free = count * item_bytes, available_memory()
    if need > free / 4:
        raise CMTError(f"{option} {count} needs about {need / 2**30:.1f} GiB for {what} ({item_bytes:,} bytes each) "
                       f"alone, more than a quarter of the {free / 2**30:.1f} GiB of memory available; lower {option}")


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


def hold_for_test(variable: str, count: int) -> None:
    """A test hook: when the environment variable `variable` (CMT_TEST_PAUSE_AFTER_SHARDS in generation,
    CMT_TEST_PAUSE_AFTER_STEP in training) equals `count`, hold still here until a signal ends the process (its
    handler raises out of the wait: Ctrl-C, SIGTERM; SIGKILL ends it), so that a test interrupts a run at a known
    point, however loaded the machine, instead of racing a timed poll against the run's end."""
    if count and os.environ.get(variable) == str(count):
        while True:
            signal.pause()
