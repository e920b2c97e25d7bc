"""Quality of the built-in digits teacher: digits FD of its samples vs the real-halves noise floor.

Each row is one `cmt evaluate` (the library call `evaluate`) on the same seeded noise: DPM-Solver++(3) x 16 on
the log-SNR grid (the issue's must-show: FD within 2x of the floor), EDM's Heun x 18 on the Karras grid
(35 NFE), 2-step Euler, and the teacher's denoiser used as a 1-step map (what a student must beat). The FD is
against all 1797 real digits; the floor is the FD between two disjoint halves of them (898 vs 899).
Writes its section of docs/results.md (between the <!-- teacher-quality --> markers) and the sample grid docs/images/.

    python benchmarks/teacher_quality.py                     # builtin teacher, 4000 samples per row
    python benchmarks/teacher_quality.py --num-samples 2000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from cmt_pipeline.config import EvaluateConfig
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.evaluation import evaluate, real_digits

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Built-in digits teacher"
ROWS = [  # (label, EvaluateConfig overrides)
    ("dpm3 x 16, log-SNR grid (the mid-training solver)", dict(solver="dpm3", steps=16, grid="logsnr")),
    ("Heun x 18, Karras grid (EDM's sampler)", dict(solver="heun", steps=18, grid="karras")),
    ("Euler x 2, log-SNR grid", dict(solver="euler", steps=2, grid="logsnr")),
    ("denoiser as a 1-step map, D(x_T, 80)", dict(student="TEACHER", steps=1)),
]


def nearest_neighbour(samples, seed: int = 0) -> tuple[float, float]:
    """Median pixel-space L2 distance to the nearest digit of one random real half (899 digits): for generated
    samples, and for the other real half (898). The teacher saw all 1797 digits, so FD against them would reward
    memorised copies; generated samples much closer to real digits than real digits are to each other would
    reveal that."""
    real = torch.from_numpy(real_digits()[0]).reshape(1797, -1).double()
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(real)))
    a, b = real[perm[:898]], real[perm[898:]]
    gen = samples.reshape(len(samples), -1).double()
    return tuple(float(torch.cdist(q, b).min(1).values.median()) for q in (gen, a))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="builtin")
    ap.add_argument("--num-samples", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default="runs/teacher-quality")
    ap.add_argument("--no-docs", action="store_true", help="print only; leave docs/ untouched")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for i, (label, over) in enumerate(ROWS):
        over = {k: args.teacher if v == "TEACHER" else v for k, v in over.items()}
        cfg = EvaluateConfig(teacher=args.teacher, num_samples=args.num_samples, seed=args.seed,
                             batch_size=args.batch_size, out=f"{args.out}/row{i}", **over)
        r = evaluate(cfg, progress=True)
        results.append((label, r))
        m = r["metrics"]
        print(f"{label:<52} NFE {m['nfe']:>3}  FD {m['digits_fd']:9.3f}  floor {m['digits_fd_floor']:.3f}  "
              f"({m['sample_seconds']:.0f} s)", flush=True)
    load = os.getloadavg()
    head = results[0][1]["metrics"]
    ratio = head["digits_fd"] / head["digits_fd_floor"]
    nn = nearest_neighbour(results[0][1]["samples"])
    print(f"dpm3 x 16 FD / floor = {ratio:.2f} (issue: within 2x); median nearest-real distance: generated "
          f"{nn[0]:.3f}, real {nn[1]:.3f}; load average {load[0]:.1f}")
    if not args.no_docs:
        write_docs(args, results, load, ratio, nn)


def write_docs(args, results, load, ratio, nn):
    grid = ROOT / "docs" / "images" / "digits-teacher-dpm3-16.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(results[0][1]["out"]) / "samples.png", grid)
    m0 = results[0][1]["metrics"]
    cmd = "python benchmarks/teacher_quality.py " + shlex.join(sys.argv[1:])
    lines = [
        SECTION, "",
        f"Measured with `{cmd.strip()}` ({args.num_samples} generated samples per row, seed {args.seed}, "
        f"teacher `{args.teacher}`; {platform.machine()} CPU, torch {torch.__version__}, "
        f"load average {load[0]:.1f} on a shared 2-core machine). Digits FD = Frechet distance in the 64 "
        "penultimate features of the shipped digits classifier (cmt_pipeline/assets/digits-classifier/), "
        "generated samples vs all 1797 real digits.", "",
        "| generator | NFE | digits FD | FD / floor |", "|---|---:|---:|---:|",
    ]
    for label, r in results:
        m = r["metrics"]
        lines.append(f"| {label} | {m['nfe']} | {m['digits_fd']:.2f} | {m['digits_fd'] / m['digits_fd_floor']:.2f} |")
    lines += [
        "", f"Noise floor (FD between two disjoint halves of the real digits, 898 vs 899): **{m0['digits_fd_floor']:.2f}**. "
        f"DPM-Solver++(3) x 16: **{m0['digits_fd']:.2f}**, {ratio:.2f}x the floor "
        f"({'within' if ratio <= 2 else 'NOT within'} the issue's 2x). The floor compares two sets of ~900, "
        f"the generator row {args.num_samples} samples against 1797, so its sampling bias is smaller than the floor's.",
        "", "The teacher was trained on all 1797 digits, the same set the FD is measured against, so memorised copies "
        "would score well. The median pixel-space L2 distance to the nearest digit of "
        f"one random real half (899 digits) is {nn[0]:.3f} for the dpm3 x 16 samples and {nn[1]:.3f} for the other "
        "real half: " + ("the samples are no closer to real digits than real digits are to each other." if nn[0] >= nn[1]
                         else "the samples sit closer to real digits than real digits do to each other, a sign of "
                         "memorisation to keep in mind when reading the FD."),
        "", f"![dpm3 x 16 samples of the built-in teacher](images/{grid.name})", "",
    ]
    path = ROOT / "docs" / "results.md"
    write_section(path, "teacher-quality", "\n".join(lines))
    print(f"wrote {path} and {grid}")


if __name__ == "__main__":
    main()
