"""Small shared helpers: CMTError (from errors.py), atomic writes, hashing, seeding."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import torch

from .errors import CMTError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a unique temporary name and rename, so readers never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C, SIGTERM or a full disk: leave no temporary file behind either
        tmp.unlink(missing_ok=True)
        raise


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


def resolve_device(device: str | None) -> torch.device:
    """'auto' picks CUDA when present; TF32 is switched off so CPU and GPU runs agree to fp32 precision."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CMTError(f"--device {device} asked for CUDA but none is available; use --device cpu")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return dev


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
