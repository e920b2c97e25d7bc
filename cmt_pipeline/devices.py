"""Devices: the one reading of --device, the precision generation, sampling and evaluation run at, and whether a
CPU trains or samples in bf16."""

from __future__ import annotations

import sys
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
    than float32, so a bf16 run there is no faster; autocast_precision then runs it in float32."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


AUTOCAST = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_precision(precision: str, device: torch.device, runs: str = "trains") -> str:
    """The autocast precision to train or sample at (`runs`: the verb of the note): the one asked for, except bf16
    on a CPU without bf16 hardware, which runs in float32 ("no") with a one-line note (emulated bf16 is slower than
    float32 there, and the results are alike: docs/results.md)."""
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        print("note: this CPU has no bf16 instructions (avx512_bf16 or AMX), where bf16 is slower than float32; "
              f"mixed_precision bf16 {runs} in float32 here", file=sys.stderr)
        return "no"
    return precision
