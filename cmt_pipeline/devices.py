"""Devices: the one reading of --device, the precision generation, sampling and evaluation run at, and whether a
CPU trains in bf16."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import CMTError


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


def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (avx512_bf16 or AMX). Elsewhere oneDNN emulates bf16, slower
    than float32, so a bf16 training run there is no faster; loop.training_precision then trains in float32."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
