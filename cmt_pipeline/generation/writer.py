"""The shard writer: a process of its own that assembles, checks, encodes and commits the generator's shards.

Why a process: casting, encoding, hashing and file I/O run Python code; on a thread beside the compute thread they
take the GIL from it (a thread launching small torch ops waited ~10% of its time for the GIL beside the former
writer thread). A child process shares memory with the generator, not its GIL. It is forked, not spawned, just
before the work loop: it starts in milliseconds (nothing to import, so nothing to overlap with the teacher's
loading) and inherits the slots' mapping. It runs no torch op and no CUDA call, so the generator's threads and
CUDA context, which a fork does not carry over, are no concern.

Protocol, over one pipe (the generator sends batches in sample order, a shard's batches consecutively):
  generator -> writer  ("batch", slot, k, offset, n)  slot's first n samples are samples [offset, offset + n)
                                                       of shard k
                       ("close",)                     no more batches: commit every shard, then answer "closed"
                       ("stop",)                      interrupted: finish the commits under way, drop the rest
  writer -> generator  ("free", slot)                 the batch was copied out, cast to the store's dtype
                       ("error", exception)           a shard failed: the generator raises it at its next batch
                       ("closed",)                    every shard sent is committed (layout.commit_shard: files,
                                                       then marker)
A batch crosses in a slot of one anonymous shared mapping made before the fork (no pickling, no /dev/shm file to
leak); on a GPU the mapping is page-locked (cudaHostRegister), so copies run asynchronously in both directions.
Back-pressure: at most ENCODING shards are encoded at once; beyond, the writer reads nothing until one is done,
frees no slot, and the generator waits for one. An interrupted generator (Ctrl-C, SIGTERM, an error) sends
"stop" and waits for the writer to finish the commits under way; a killed one takes the writer with it. Either
way nothing of a shard is trusted before its marker, written last (layout.py).
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import select
import signal
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import torch
from tqdm.auto import tqdm

from ..stores import WRITERS
from ..stores.checks import name_samples, nonfinite_samples
from ..stores.layout import commit_shard, marker_problems, read_marker, sample_arrays, shard_range
from ..stores.location import Location
from ..errors import CMTError

ENCODING = 2  # shards encoded at once
ALIGN = 4096  # every slot array starts on a page: page-locking and DMA like it
PR_SET_PDEATHSIG = 1


def slot_fields(plan: dict, batch_size: int) -> dict[str, tuple[tuple, type]]:
    """One batch as the solve leaves it: states in float32 (the writer casts them to the store's dtype)."""
    c_h_w, k = tuple(plan["shape"]), plan["num_states"]
    return {"prior": ((batch_size, *c_h_w), np.float32), "traj": ((batch_size, k, *c_h_w), np.float32),
            "x0": ((batch_size, *c_h_w), np.float32), "labels": ((batch_size,), np.int64),
            "index": ((batch_size,), np.int64)}


def slot_bytes(fields: dict) -> int:
    return sum(-(-int(np.prod(shape)) * np.dtype(dt).itemsize // ALIGN) * ALIGN for shape, dt in fields.values())


def slot_views(buf, fields: dict, slots: int) -> list[dict[str, np.ndarray]]:
    views, offset = [], 0
    for _ in range(slots):
        views.append({})
        for name, (shape, dt) in fields.items():
            views[-1][name] = np.ndarray(shape, dt, buffer=buf, offset=offset)
            offset += -(-views[-1][name].nbytes // ALIGN) * ALIGN
    return views


def shard_done(out: Location, plan: dict, k: int, report: bool = False) -> bool:
    """A shard counts as done when its marker names this plan and its files have the recorded sizes (a cheap
    stat); a marker whose files were truncated or deleted since, or copied from another dataset, is redone.
    Flipped bytes need `cmt verify --repair`."""
    marker = read_marker(out, k)
    if marker is None:
        return False
    problems = marker_problems(out, plan, marker)
    if problems and report:
        tqdm.write(f"shard {k}: {problems[0]}; regenerating it", file=sys.stderr)
    return not problems


def check_finite(arrays: dict, plan: dict, k: int) -> None:
    """Refuse shard k before anything of it is stored when the teacher's solve gave a NaN or inf."""
    bad = nonfinite_samples(arrays)
    if len(bad):
        fp16 = ", or --dtype float32 (float16 overflows beyond 65504)" if plan["dtype"] == "float16" else ""
        raise CMTError(f"the teacher's trajectories hold NaN or inf in {name_samples(bad)} of shard {k}; check the "
                       f"teacher's weights{fp16}, or pass --allow-nonfinite to store them (trainers refuse them)")


def die_with_parent(parent: int) -> None:
    """Be killed with the generator (Linux's PR_SET_PDEATHSIG; elsewhere the closed pipe ends the writer at its
    next read): a kill -9 then stops every write of the run at once, as it did when the writer was a thread."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the generator died before prctl
        os._exit(1)


def serve(conn, parent_end, parent: int, root: str, plan: dict, slots: list, allow_nonfinite: bool) -> None:
    """The writer process's loop (see the module docstring for the protocol)."""
    parent_end.close()  # else the generator's death would not end our reads
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the generator decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = Location.of(root)
    store = WRITERS[plan["format"]](out, plan)
    lock = threading.Lock()

    def tell(*msg) -> None:
        try:
            with lock:
                conn.send(msg)
        except OSError:  # the generator is gone: nobody to tell
            pass

    def finish(k: int, arrays: dict) -> BaseException | None:
        try:
            if not allow_nonfinite:
                check_finite(arrays, plan, k)
            try:
                commit_shard(out, plan, k, store.write_shard(k, arrays))
            except FileNotFoundError:  # whoever completed the set cleared .tmp under us: fine if k is done
                if not shard_done(out, plan, k):
                    raise
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the generator, which raises it
            return e
        return None

    told = deque()  # (shard, future) in shard order: failures are told in that order, whichever encoder finishes
    order = threading.Lock()  # first, so that the generator always raises the first failing shard's error

    def tell_in_order(_) -> None:
        with order:
            while told and told[0][1].done():
                k, future = told.popleft()
                e = future.result()
                if e is None:
                    continue
                try:
                    with lock:
                        conn.send(("error", e))
                except Exception:  # an exception that does not pickle: its one line
                    tell("error", CMTError(f"writing shard {k} failed: {type(e).__name__}: {e}"))

    shards, running = {}, set()
    with ThreadPoolExecutor(ENCODING, thread_name_prefix="cmt-encode") as pool:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the generator was killed: so are we, as its writer thread was before
                os._exit(1)
            if msg[0] != "batch":
                break
            _, s, k, offset, n = msg
            if k not in shards:
                while len(running) >= ENCODING:  # back-pressure: read nothing more until a shard is done
                    running = wait(running, return_when=FIRST_COMPLETED).not_done
                start, stop = shard_range(plan, k)
                shards[k] = ({name: np.empty((stop - start, *tail), dt) for name, (tail, dt) in
                              sample_arrays(plan).items()}, start, [stop - start])
            arrays, start, left = shards[k]
            with np.errstate(over="ignore"):  # a float16 overflow becomes inf, which check_finite reports
                for name, a in arrays.items():
                    a[offset - start:offset - start + n] = slots[s][name][:n]
            tell("free", s)
            left[0] -= n
            if not left[0]:
                future = pool.submit(finish, k, shards.pop(k)[0])
                with order:
                    told.append((k, future))
                future.add_done_callback(tell_in_order)
                running.add(future)
    if msg[0] == "close":
        tell("closed")
    out.clean_scratch()


class ShardWriter:
    """The generator's end of the writer: `slots` batch slots to fill, and the writer process behind them.

    Use: `s = claim()`, fill `tensors[s]` (prior, labels, index; the solve writes traj and x0), `send(s, k,
    offset, n)`; `close()` once every batch is sent. A writer failure is raised by the next claim or send."""

    def __init__(self, out: Location, plan: dict, batch_size: int, slots: int, allow_nonfinite: bool,
                 device: torch.device):
        fields = slot_fields(plan, batch_size)
        self.buf = mmap.mmap(-1, slots * slot_bytes(fields))  # shared (MAP_SHARED) with the forked writer
        views = slot_views(self.buf, fields, slots)
        self.tensors = [{name: torch.from_numpy(a) for name, a in v.items()} for v in views]
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, self.conn, os.getpid(), str(out), plan, views, allow_nonfinite),
                                   name="cmt-shard-writer", daemon=True)
        self.process.start()
        child.close()
        self.readable = select.poll()
        self.readable.register(self.conn.fileno(), select.POLLIN)
        self.free, self.closed = list(range(slots)), False
        self.pinned = None
        if device.type == "cuda":  # page-locked, so that both copies are asynchronous
            base = self.tensors[0]["prior"]
            torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(base.data_ptr(), len(self.buf), 0))
            self.pinned = base.data_ptr()

    def _receive(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.process.join()
            raise CMTError(f"the shard writer process died (exit code {self.process.exitcode}); rerun the same "
                           "command to resume (finished shards are kept)") from None
        if msg[0] == "free":
            self.free.append(msg[1])
        elif msg[0] == "error":
            raise msg[1]
        elif msg[0] == "closed":
            self.closed = True

    def _drain(self) -> None:
        while self.readable.poll(0):  # one syscall; Connection.poll builds a selector per call (~80 us)
            self._receive()

    def claim(self) -> int:
        """A free slot, waiting for the writer to free one when all are in use (back-pressure)."""
        self._drain()
        while not self.free:
            self._receive()
        return self.free.pop()

    def send(self, slot: int, k: int, offset: int, n: int) -> None:
        self._drain()
        self.conn.send(("batch", slot, k, offset, n))

    def close(self) -> None:
        """Wait until every shard sent is committed; raise the first failure."""
        self.conn.send(("close",))
        while not self.closed:
            self._receive()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        """Interrupted or failed: the writer finishes the commits under way and drops the rest. Never leaves it
        running: the pipe closes with this process in any case."""
        if not self.closed:
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
        self.conn.close()
        self.process.join()
        if self.pinned is not None:
            torch.cuda.synchronize()  # no copy into a slot may be in flight when it is unpinned
            torch.cuda.check_error(torch.cuda.cudart().cudaHostUnregister(self.pinned))
