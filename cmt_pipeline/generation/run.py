"""The generation work loop: shards of consecutive sample indices, each solved and written independently.

Determinism: sample i's prior noise (and label) come from a CPU generator seeded by (seed, i) alone, and
batches never straddle shards, so a shard's bytes depend only on (config, shard index): the dataset is the
same for any number of workers, any order, and any number of interruptions.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import deque

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import GenerateConfig, to_dict
from ..latents import load_vae
from ..solvers import NFE_PER_STEP, SOLVER_REVISION, get_solver, make_grid
from ..stores import WRITERS
from ..stores.layout import STORE_VERSION, claim_plan, finalize, num_shards, sample_arrays, shard_range
from ..stores.location import Location
from ..teachers import load_teacher
from ..threads import one_thread_per_call, resolve_threads
from ..errors import CMTError
from ..memory import check_memory
from ..devices import full_fp32, resolve_device
from ..hooks import hold_for_test
from .worker import Worker
from .graphs import GraphedTeacher
from .prefetch import DEPTH as PRIORS_AHEAD, Priors, ring_fields
from .writer import ENCODING, ShardWriter, shard_done, slot_bytes, slot_fields

DTYPES = {"float16": np.float16, "float32": np.float32}
PAUSE_VARIABLE = "CMT_TEST_PAUSE_AFTER_SHARDS"  # =N: hold once N shards are handed to the writer (hooks.hold_for_test)
# Settings that change no stored byte, so a resume may differ in them.
RUNTIME_ONLY = ("out", "device", "cuda_graphs")


def validate(cfg: GenerateConfig, teacher) -> None:
    """What the fields' own choices and ranges cannot check (config.py checks those)."""
    if not 0 < cfg.sigma_min < cfg.sigma_max:
        raise CMTError(f"need 0 < sigma_min < sigma_max, got {cfg.sigma_min}, {cfg.sigma_max}")
    labels = cfg.class_labels
    if teacher.num_classes == 0 and labels not in ("none", "random"):
        raise CMTError(f"--class-labels {labels} given, but the teacher is unconditional; drop the option")
    if teacher.num_classes and labels == "none":
        raise CMTError(f"the teacher is class-conditional ({teacher.num_classes} classes); "
                       "use --class-labels random or a class index")
    if teacher.num_classes and labels != "random":
        if not labels.lstrip("-").isdigit() or not 0 <= int(labels) < teacher.num_classes:
            raise CMTError(f"--class-labels must be random, none or a class in 0..{teacher.num_classes - 1}, "
                           f"got {labels!r}")


def check_sizes(cfg: GenerateConfig, plan: dict, out: Location, slots: int, todo: int) -> None:
    """Memory for the writer's batch slots (and the priors drawn ahead) and the shards it holds, and disk for the
    `todo` samples still to store, against what this machine has, before the plan is claimed: a refused size leaves
    nothing behind."""
    stored = sum(math.prod(tail) * np.dtype(dt).itemsize for tail, dt in sample_arrays(plan).values())
    batch = min(cfg.batch_size, plan["shard_size"])  # a batch never crosses a shard
    ring = PRIORS_AHEAD * sum(math.prod(shape) * np.dtype(dt).itemsize
                              for shape, dt in ring_fields(plan["shape"], 1).values())  # the priors drawn ahead
    check_memory("--batch-size", batch, slots * slot_bytes(slot_fields(plan, 1)) + ring,
                 f"{slots} batch slots and {PRIORS_AHEAD} batches of priors")
    # each shard being encoded is held twice (the arrays, their encoded bytes), one more is being filled
    check_memory("--shard-size", plan["shard_size"], (2 * ENCODING + 1) * stored, "the shards the writer holds")
    if out.local:
        root = next(p for p in (out.path, *out.path.parents) if p.exists())
        free = shutil.disk_usage(root).free
        if todo * stored > free:
            raise CMTError(f"{todo:,} samples need about {todo * stored / 2**30:.1f} GiB on disk ({stored:,} bytes "
                           f"each before compression), and {root} has {free / 2**30:.1f} GiB free; free space, "
                           f"lower --num-samples or --steps{', or use --dtype float16' * (plan['dtype'] != 'float16')}")


def smoke_test(teacher, device) -> None:
    """One forward pass before any output exists, so a misfit model fails fast with a readable message."""
    x = torch.zeros(1, *teacher.shape, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if teacher.num_classes else None
    try:
        with torch.no_grad():
            out = teacher(x, 1.0, labels)
    except RuntimeError as e:
        raise CMTError(f"the teacher failed on an input of shape {tuple(x.shape)}: {str(e).splitlines()[0]}; "
                       "check its in/out channels and sample size") from e
    if out.shape != x.shape:
        raise CMTError(f"the teacher maps shape {tuple(x.shape)} to {tuple(out.shape)}; a denoiser must keep "
                       "the shape (check out_channels equals in_channels)")


def make_plan(cfg: GenerateConfig, teacher, sigmas: torch.Tensor, vae=None) -> dict:
    """Everything that determines the stored bytes: a resumed run must reproduce it exactly. A latent teacher's
    VAE (a LatentCodec) changes no stored byte but says what the latents mean, so readers can decode them."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_ONLY}
    description = teacher.describe()
    return {
        "store_version": STORE_VERSION, "format": cfg.format, "num_samples": cfg.num_samples,
        "shard_size": cfg.shard_size,
        "shape": list(teacher.shape), "num_states": len(sigmas) - 1, "dtype": cfg.dtype,
        "sigmas": sigmas.tolist(), "solver": cfg.solver, "solver_revision": SOLVER_REVISION,
        "nfe_per_sample": NFE_PER_STEP[cfg.solver] * cfg.steps,
        "num_classes": teacher.num_classes, "config": config,
        "guidance": description.get("guidance"),
        "teacher": {"spec": cfg.teacher, "description": description, "fingerprint": teacher.fingerprint()},
        "vae": vae.describe(teacher.shape) if vae is not None else None,
        "cmt_version": __version__,
    }


def solve_batch(teacher, solver, sigmas, slot: dict[str, torch.Tensor], n: int, device):
    """Solve the batch whose prior (and labels) fill `slot`'s first n rows, leaving its float32 states there. On a
    GPU nothing waits: the slot is page-locked, both copies are asynchronous, and the returned event marks the
    end of the copy back (None on a CPU, where all is done on return)."""
    x = slot["prior"][:n].to(device, non_blocking=True) * float(sigmas[0])
    lab = slot["labels"][:n].to(device, non_blocking=True) if teacher.num_classes else None
    if device.type == "cpu":  # each state straight into the slot
        solver(teacher, x, sigmas, lab, into=[*slot["traj"][:n].unbind(1), slot["x0"][:n]])
        return None
    states = torch.empty((n, len(sigmas), *x.shape[1:]), device=device)  # one copy back, not one per state
    solver(teacher, x, sigmas, lab, into=states.unbind(1))
    slot["traj"][:n].copy_(states[:, :-1], non_blocking=True)
    slot["x0"][:n].copy_(states[:, -1], non_blocking=True)
    if device.type != "cuda":
        return None
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(device))
    return copied


def batch_order(plan: dict, shards: list[int], batch_size: int):
    """(shard, offset, n) of each batch of `shards`, in the order they are solved (lazily: a run may hold millions)."""
    for k in shards:
        start, stop = shard_range(plan, k)
        for offset in range(start, stop, batch_size):
            yield k, offset, min(batch_size, stop - offset)


@full_fp32()
def generate(cfg: GenerateConfig, worker: Worker | None = None, progress: bool = True,
             allow_nonfinite: bool = False) -> dict:
    """Generate (or resume) this worker's shards of the dataset in cfg.out; finalize when the set is complete.
    A shard with a NaN or inf is refused before it is stored, unless allow_nonfinite (kept to be inspected)."""
    worker = worker or Worker()
    out = Location.of(cfg.out)  # first: a URL whose fsspec package is missing fails before the teacher loads
    threads = resolve_threads(worker.threads or None)
    device = worker_device(cfg.device, worker)
    if cfg.cuda_graphs and device.type != "cuda":
        raise CMTError(f"--cuda-graphs needs a CUDA device and this run is on {device}; drop --cuda-graphs")
    teacher = load_teacher(cfg.teacher, device, cfg.guidance_scale, cfg.null_label)
    validate(cfg, teacher)
    smoke_test(teacher, device)
    vae = load_vae(cfg.vae, cfg.teacher, shape=teacher.shape)  # on the CPU: only described, never run here
    sigmas = make_grid(cfg.grid, cfg.steps, cfg.sigma_max, cfg.sigma_min)
    plan = make_plan(cfg, teacher, sigmas, vae)
    threads = threads if device.type == "cpu" else 1
    lag = 1 if device.type == "cuda" else 0  # batches in flight on a GPU before the main thread waits for one
    resuming = out.exists("plan.json")
    mine = [k for k in range(num_shards(plan)) if worker.owns(k) and not (resuming and shard_done(out, plan, k))]
    check_sizes(cfg, plan, out, threads + lag + 2, sum(shard_range(plan, k)[1] - shard_range(plan, k)[0] for k in mine))
    claim_plan(out, plan)
    WRITERS[cfg.format](out, plan).prepare()
    solver = get_solver(cfg.solver)
    denoiser = GraphedTeacher(teacher, check=plan["nfe_per_sample"]) if cfg.cuda_graphs else teacher

    to_write = [k for k in mine if not shard_done(out, plan, k, report=True)]  # done ones were read once, above
    n_to_write = sum(shard_range(plan, k)[1] - shard_range(plan, k)[0] for k in to_write)
    t0 = time.perf_counter()
    bar = tqdm(total=n_to_write, unit="sample", disable=not progress or n_to_write == 0,
               desc=f"worker {worker.index}/{worker.count}" if worker.count > 1 else "generate")

    # Batches flow through slots to the writer process (writer.py), which casts, checks, encodes and commits
    # whole shards while the teacher solves the next batches. On a CPU the worker's threads solve that many
    # batches at once, across shard boundaries, each with one intra-op thread: the bytes cannot depend on the
    # thread count (threads.py). A GPU runs one batch at a time, and the main thread waits for a batch's copy
    # back (its event) only once the next batch is launched (lag).
    # The priors are drawn ahead in a process of their own (prefetch.py), and copied into each batch's slot. It is
    # forked before the writer, so that it holds no end of the writer's pipe.
    batch_size = min(cfg.batch_size, plan["shard_size"])
    with Priors(((offset, n) for _, offset, n in batch_order(plan, to_write, cfg.batch_size)), batch_size, cfg.seed,
                plan["shape"], teacher.num_classes, cfg.class_labels) as priors, \
            ShardWriter(out, plan, batch_size, threads + lag + 2, allow_nonfinite, device) as writer, \
            one_thread_per_call(threads) as run:
        def batches():
            """(slot, shard, offset, n) in sample order, the slot filled with the batch's priors."""
            for k, offset, n in batch_order(plan, to_write, cfg.batch_size):
                if offset == shard_range(plan, k)[0]:  # another process (a straggler, an overlapping rerun) may
                    skip = shard_done(out, plan, k)    # have finished this shard since
                noise, labels = priors.take()  # every batch's, a skipped one's too: they are drawn in this order
                if skip:
                    priors.done()
                    continue
                s = writer.claim()
                slot = writer.tensors[s]
                slot["prior"][:n].numpy()[:] = noise[:n]
                slot["labels"][:n].numpy()[:] = labels[:n]
                slot["index"][:n] = torch.arange(offset, offset + n)
                priors.done()
                yield s, k, offset, n

        def solve(batch):
            return batch, solve_batch(denoiser, solver, sigmas, writer.tensors[batch[0]], batch[3], device)

        handed = 0

        def send(batch, copied):
            nonlocal handed
            if copied is not None:
                copied.synchronize()
            writer.send(*batch)
            bar.update(batch[3])
            _, k, offset, n = batch
            if offset + n == shard_range(plan, k)[1]:
                handed += 1
                hold_for_test(PAUSE_VARIABLE, handed)

        unsent = deque()
        for solved in run(solve, batches()):
            unsent.append(solved)
            if len(unsent) > lag:
                send(*unsent.popleft())
        while unsent:
            send(*unsent.popleft())
        writer.close()
    bar.close()
    out.clean_scratch()
    elapsed = time.perf_counter() - t0
    manifest = finalize(out, strict=False)
    return {
        "out": str(out), "generated": n_to_write, "shards_written": len(to_write), "seconds": elapsed,
        "samples_per_s": n_to_write / elapsed if elapsed > 0 and n_to_write else math.nan,
        "complete": manifest is not None, "num_samples": plan["num_samples"],
        "bytes_on_disk": out.usage(),
    }


def worker_device(spec: str, worker: Worker) -> torch.device:
    """`auto`/`cuda` give each local worker its own GPU; modulo the visible count, since Slurm's --gpus-per-task
    binding leaves each task one visible GPU. An explicit cuda:N is kept as given."""
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", worker.local_rank % torch.cuda.device_count())
    return device
