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


def cpu_bf16_fast() -> bool:
    """Whether bf16 autocast is faster than float32 on this CPU for the project's small convolutional networks:
    with AMX, or with avx512_bf16 on an AMD CPU (an EPYC: mid-training 1.5x the steps per second, sampling 1.7-1.8x).
    An Intel CPU with avx512_bf16 but no AMX runs oneDNN's native avx512_core_bf16 kernels more slowly than float32
    (a Xeon: 0.72x float32's training steps and forwards; docs/performance.md, "bf16 on a CPU"), and a CPU without bf16
    instructions emulates it, slower still."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16") and "AMD" in str(caps.get("cpu_name", "")))


AUTOCAST = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_precision(precision: str, device: torch.device, runs: str = "trains") -> str:
    """The autocast precision to train or sample at (`runs`: the verb of the note): the one asked for, except bf16
    on a CPU where it is slower than float32 (cpu_bf16_fast), which runs in float32 ("no") with a one-line note
    (the results are alike: docs/results.md, "Mid-training in bf16")."""
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_fast():
        print("note: bf16 is slower than float32 on this CPU (it has neither AMX nor an AMD core's avx512_bf16); "
              f"mixed_precision bf16 {runs} in float32 here", file=sys.stderr)
        return "no"
    return precision
