"""Generation overhead: wall time of trajectory generation / the bare teacher forward passes it needs.

The generation's wall time is also split into setup (from the call to the loop's first teacher forward: teacher
loading, smoke test, fingerprint, plan, prepare), steady state (first to last forward call of the loop) and tail
(last forward call to the return: the last batches' solve on a GPU, the last shard's write, finalize). Forward
calls are timed where they are launched, so on a GPU the tail includes the queued work.

Both are measured in one run, interleaved (median of --repeats), with the same model, batch and NFE, so
machine load affects both alike. The generation side is the library call behind `cmt generate-trajectories`
(teacher loading, seeded priors, the solver, fp16 casting, compression, checksums, manifest); the bare side
is `teacher(x, sigma)` called NFE * ceil(N / batch) times on a preallocated batch. Also reports bytes on disk
per sample against raw float32 (prior + K states + x0).

    python benchmarks/generation.py                       # digits-sized UNet, N=2048, batch 256, dpm3 x 16
    python benchmarks/generation.py --teacher builtin --num-samples 4096 --threads 2
    python benchmarks/generation.py --teacher dit --num-samples 512 --guidance-scale 2   # a latent-sized DiT
    python benchmarks/generation.py --teacher cifar --device cuda --batch-size 512   # a DDPM++-sized UNet
    python benchmarks/generation.py --teacher dit --device cuda --cuda-graphs   # the teacher replayed as a CUDA graph
    PYTHONPATH=/tmp/old python benchmarks/generation.py ...   # another checkout's generation, same benchmark
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import cmt_pipeline.generation.run as run
from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.constants import SIGMA_MAX
from cmt_pipeline.generation import Worker, generate
from cmt_pipeline.solvers import NFE_PER_STEP
from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet, load_teacher


def teacher_spec(name: str, tmp: Path) -> str:
    """Seeded random-weight stand-ins for a real model: `unet`, a digits-sized (1x8x8, channels 48/96, ~2 M
    parameters) EDM UNet; `dit`, a class-conditional DiTTransformer2DModel on 4x16x16 latents (patch 2, 4 blocks
    of width 128, learned variance, 10 classes + the null row) with a DDPMScheduler, in the DiT pipeline layout;
    `cifar`, a CIFAR-10 EDM UNet of the DDPM++ class (3x32x32, channels 128/256/256/256, 4 layers per block,
    attention at the lowest resolution, 58.7 M parameters)."""
    torch.manual_seed(0)
    if name == "unet":
        EDMDenoiser(build_unet((1, 8, 8), channels=(48, 96)), Precond()).save(tmp / "teacher")
    elif name == "cifar":
        EDMDenoiser(build_unet((3, 32, 32), channels=(128, 256, 256, 256), layers_per_block=4, attention=True),
                    Precond()).save(tmp / "teacher")
    elif name == "dit":
        from diffusers import DDPMScheduler, DiTTransformer2DModel

        DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=8,
                              num_layers=4, sample_size=16, patch_size=2, num_embeds_ada_norm=10,
                              ).save_pretrained(tmp / "teacher" / "transformer")
        DDPMScheduler(variance_type="learned_range").save_pretrained(tmp / "teacher" / "scheduler")
    else:
        return name
    return str(tmp / "teacher")


@torch.no_grad()
def bare_forward_seconds(teacher, n: int, batch: int, nfe: int, device: str = "cpu") -> float:
    x = torch.randn(batch, *teacher.shape, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if teacher.num_classes else None
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for b in range(math.ceil(n / batch)):
        xb = x[: min(batch, n - b * batch)]
        for i in range(nfe):
            teacher(xb, SIGMA_MAX * 0.6 ** i, None if labels is None else labels[: len(xb)])
    sync()
    return time.perf_counter() - t0


def time_forwards(calls: list) -> None:
    """Make generation's teacher append the time of each forward call to `calls`."""
    load = run.load_teacher

    def loaded(*args, **kwargs):
        teacher = load(*args, **kwargs)
        forward = teacher.forward

        def timed(*a, **k):
            calls.append(time.perf_counter())
            return forward(*a, **k)
        teacher.forward = timed
        return teacher
    run.load_teacher = loaded
    graphed = getattr(run, "GraphedTeacher", None)  # --cuda-graphs: a replay calls no forward; time the calls
    if graphed is not None:
        replayed = graphed.__call__

        def timed_call(self, *a, **k):
            calls.append(time.perf_counter())
            return replayed(self, *a, **k)
        graphed.__call__ = timed_call


def emit(report: dict, path: str | None) -> None:
    """Print a benchmark's report, and write it as JSON when asked (shared by the benchmarks)."""
    print(json.dumps(report, indent=2))
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="unet", help="unet (default), dit, builtin, gmm:..., or a folder")
    ap.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (1 = none)")
    ap.add_argument("--num-samples", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--solver", default="dpm3")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both sides run")
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--cuda-graphs", action="store_true", help="generate with --cuda-graphs (the bare side is eager)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="cmt-bench-"))
    try:
        spec = teacher_spec(args.teacher, tmp)
        teacher = load_teacher(spec, torch.device(args.device), guidance_scale=args.guidance_scale)
        nfe = NFE_PER_STEP[args.solver] * args.steps
        bare_forward_seconds(teacher, args.batch_size, args.batch_size, 2, args.device)  # warm-up
        gen_t, bare_t, results, phases, calls = [], [], {}, [], []
        time_forwards(calls)
        for r in range(args.repeats):
            for fmt in ("zarr", "wds"):
                out = tmp / f"{fmt}-{r}"
                cfg = GenerateConfig(teacher=spec, out=str(out), num_samples=args.num_samples, solver=args.solver,
                                     steps=args.steps, format=fmt, batch_size=args.batch_size,
                                     shard_size=args.shard_size, guidance_scale=args.guidance_scale,
                                     device=args.device, **({"cuda_graphs": True} if args.cuda_graphs else {}))
                calls.clear()
                t0 = time.perf_counter()
                stats = generate(cfg, Worker(threads=args.threads), progress=False)
                if fmt == "zarr":
                    gen_t.append(time.perf_counter() - t0)
                    # calls[0] is the smoke test's forward: the loop starts at calls[1]
                    phases.append((calls[1] - t0, calls[-1] - calls[1], t0 + gen_t[-1] - calls[-1]))
                results[fmt] = stats["bytes_on_disk"] / args.num_samples
                shutil.rmtree(out)
            bare_t.append(bare_forward_seconds(teacher, args.num_samples, args.batch_size, nfe, args.device))
        raw = (args.steps + 2) * math.prod(teacher.shape) * 4
        report = {
            "teacher": args.teacher, "parameters": sum(p.numel() for p in teacher.parameters()),
            "guidance_scale": args.guidance_scale, "num_samples": args.num_samples, "batch_size": args.batch_size,
            "solver": args.solver, "steps": args.steps, "nfe": nfe, "threads": args.threads,
            "cuda_graphs": args.cuda_graphs,
            "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
            "generate_s": statistics.median(gen_t), "bare_forward_s": statistics.median(bare_t),
            "ratio": statistics.median(gen_t) / statistics.median(bare_t),
            **{f"{name}_s": statistics.median(p[i] for p in phases) for i, name in
               enumerate(("setup", "steady", "tail"))},
            "bytes_per_sample_raw_fp32": raw,
            "bytes_per_sample": {fmt: round(b, 1) for fmt, b in results.items()},
            "load_average": os.getloadavg()[0],
        }
        emit(report, args.json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
