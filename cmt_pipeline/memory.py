"""Memory checks: options that would allocate more than the machine has are refused up front."""

from __future__ import annotations

import os

from .errors import CMTError


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (Linux: MemAvailable; elsewhere the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(option: str, count: int, item_bytes: int, what: str) -> None:
    """Refuse `option` = count when its `what` alone would take over a quarter of the memory available (a network's
    activations take several times more): a clear estimate before anything is allocated, not minutes of swapping."""
    need, free = count * item_bytes, available_memory()
    if need > free / 4:
        raise CMTError(f"{option} {count} needs about {need / 2**30:.1f} GiB for {what} ({item_bytes:,} bytes each) "
                       f"alone, more than a quarter of the {free / 2**30:.1f} GiB of memory available; lower {option}")
