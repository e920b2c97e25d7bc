"""Why does ECT post-training make a CMT student worse, and what makes it better? One mid-trained (CMT) student is
post-trained by ECT under variants that each change one setting of a reference-faithful base (sony/cmt's
run_cmt+ecm_cifar.sh: RAdam, lr 1e-4, q 4096 fixed, the unsquared L2 norm over (t - r)), several training seeds
each, the same evaluation noise for all. Per variant: each metric at the end, mean ± std over seeds, beside the
init's value (step 0, the same for every run). Writes run folders under --out, OUT/<part>.json and its section of
docs/results.md (`<!-- ect-ablation:<part> -->`).

    python benchmarks/studies/ect_ablation.py --part gmm                  # init_comparison.py's mixture teacher + CMT
    python benchmarks/studies/ect_ablation.py --part digits --init runs/digits/mid/model.ckpt \
        --store runs/digits/trajectories

--variants picks a subset by name (comma-separated). Finished runs are reused. A study (benchmarks/studies/: kept
reproducible, not maintained); run from the repository root as above: it puts benchmarks/ on sys.path for
init_comparison.py and midtrain_quality.py.

    python benchmarks/studies/ect_ablation.py --part gmm --mid-budgets 50,100,200,400 \
        --variants 'gmm-post.toml recipe' --seeds 3
    python benchmarks/studies/ect_ablation.py --part digits --store runs/digits/trajectories --mid-budgets 300,1800 \
        --variants 'warm-up + lr / 10' --seeds 2 --eval-samples 5000

instead run the variants from CMT students mid-trained for each budget (gmm: init_comparison.py's teacher and store;
digits: midtrain_quality.py's pinned base settings on --store): whether ECT improves a CMT student depends on how far
mid-training got (section `<!-- ect-ablation:<part>-mid-budgets -->`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the maintained scripts it builds on
from init_comparison import (QUIET, done, eval_rows, fmt, fresh, gmm_cmt, parser as comparison_parser,  # noqa: E402
                             stage_seconds)
from midtrain_quality import BASE as MID_BASE  # noqa: E402

from cmt_pipeline.config import MidTrainConfig, PostTrainConfig, load_config
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.stores import open_store, read_range
from cmt_pipeline.training.midtrain import mid_train
from cmt_pipeline.training.posttrain import post_train
from cmt_pipeline.files import atomic_write_json

BASE = dict(objective="ect", optimizer="radam", lr=1e-4, lr_schedule="constant", q=4096.0, q_double_every=0,
            distance="norm", huber_c=0.0, ema_decay=0.99, dropout=0.0)
VARIANTS = {
    "base (reference)": {},
    "adam": dict(optimizer="adam"),
    "warm-up 10% of steps": dict(warmup_steps=-1),  # resolved to steps // 10
    "lr / 10": dict(lr=1e-5),
    "lr x 10": dict(lr=1e-3),
    "q 256": dict(q=256.0),
    "l2 (mean sq) at q 256": dict(distance="l2", q=256.0),
    "EMA 0.999": dict(ema_decay=0.999),
    "dropout 0.2": dict(dropout=0.2),
    "teacher samples as data": dict(data="teacher"),  # resolved to the store's x0 (digits only)
    "warm-up + l2 at q 256": dict(warmup_steps=-1, distance="l2", q=256.0),
    "warm-up + lr / 10": dict(warmup_steps=-1, lr=1e-5),
    "warm-up + lr / 3": dict(warmup_steps=-1, lr=3e-5),
    "warm-up + lr / 30": dict(warmup_steps=-1, lr=3.3e-6),
    "batch x 4": dict(batch_size=-4),  # resolved to 4 x --batch
    "fresh mixture samples": dict(gmm_samples=1 << 18),  # gmm only: no sample seen twice
    "warm-up + fresh mixture samples": dict(warmup_steps=-1, gmm_samples=1 << 18),
    # configs/gmm-post.toml's recipe until 2026-12-02 (the name keeps docs/results.md's sections reproducible)
    "gmm-post.toml recipe": dict(distance="l2", q=256.0, lr=1e-3, lr_schedule="linear"),
}
METRICS = {"gmm": ("1step_flow_map_mse", "1step_sliced_w2", "2step_sliced_w2"),
           "digits": ("1step_digits_fd", "2step_digits_fd", "1step_digits_kid", "2step_digits_kid")}


def teacher_samples(store: Path, out: Path) -> str:
    """The store's solver samples x0 (clipped to the data range [-1, 1]) as an (N, C, H, W) .npy: ECT on the
    teacher's distribution, not the data's."""
    path = out / "teacher-samples.npy"
    if not path.exists():
        x0 = np.clip(read_range(open_store(store), 0)["x0"].astype(np.float32), -1, 1)  # as images are stored
        out.mkdir(parents=True, exist_ok=True)
        np.save(path, x0)
    return str(path)


def run_dir(args, name: str, seed: int) -> Path:
    return Path(args.out) / args.part / f"{name.replace(' ', '_').replace('/', '')}-seed{seed}"


def run_variant(args, name: str, overrides: dict, data: str, init: str) -> dict[int, dict]:
    """{seed: last eval row}, with the init's row under seed -1."""
    overrides = dict(overrides)
    if overrides.get("warmup_steps") == -1:
        overrides["warmup_steps"] = args.steps // 10
    if overrides.get("batch_size", 0) < 0:
        overrides["batch_size"] = -overrides["batch_size"] * args.batch
    if overrides.get("data") == "teacher":
        if not args.store:
            raise SystemExit(f"variant {name!r} needs --store")
        overrides["data"] = teacher_samples(Path(args.store), Path(args.out))
    ends = {}
    for seed in range(args.seeds):
        run = run_dir(args, name, seed)
        if not done(run, "metrics.json"):
            t0 = time.perf_counter()
            cfg = {**BASE, "data": data, "batch_size": args.batch, "gmm_samples": 8192, **overrides}
            post_train(PostTrainConfig(init=init, seed=seed, steps=args.steps, eval_samples=args.eval_samples,
                                       checkpoint_every=args.steps, out=str(fresh(run)), **cfg, **QUIET),
                       progress=False)
            print(f"[{args.part}] {name} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        rows = eval_rows(run)
        ends[-1], ends[seed] = rows[0], rows[max(rows)]
    return ends


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=["gmm", "digits"], required=True)
    p.add_argument("--init", default="", help="the CMT student (mid-cm model.ckpt); gmm: made here if not given")
    p.add_argument("--store", default="", help="its trajectory store (the 'teacher samples' variant)")
    p.add_argument("--out", default="runs/ect-ablation")
    p.add_argument("--doc", default="docs/results.md")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--mid-budgets", default="", help="comma-separated mid-training steps: CMT inits made here, one per budget (digits: needs --store)")
    p.add_argument("--gmm-time-scale", type=float, default=1000.0,
                   help="the mixture teacher's timestep scale (init_comparison.py's default is 1; 1000 made this "
                        "benchmark's documented sections)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = "gmm:gmm8x8" if args.part == "gmm" else "digits"
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if args.mid_budgets:
        if args.init or (args.part == "digits" and not args.store):
            raise SystemExit("--mid-budgets mid-trains the CMT inits itself: drop --init (digits: give --store)")
        return mid_budgets(args, names, [int(b) for b in args.mid_budgets.split(",")])
    init = args.init
    if not init:
        if args.part != "gmm":
            raise SystemExit("--init is required for digits: a mid-cm model.ckpt, e.g. runs/digits/mid/model.ckpt")
        _, mid = gmm_cmt(gmm_args(args), Path(args.out) / "gmm-cmt")
        init, args.store = str(mid / "model.ckpt"), args.store or str(Path(args.out) / "gmm-cmt" / "trajectories")
    if args.part == "gmm" and "teacher samples as data" in names:
        names.remove("teacher samples as data")  # the mixture's data is exact: the teacher's samples are worse
    if args.part == "digits":
        names = [n for n in names if "mixture" not in n]
    results = {n: run_variant(args, n, VARIANTS[n], data, init) for n in names}
    minutes = sum(stage_seconds(run_dir(args, n, k)) for n in names for k in range(args.seeds)) / 60
    metrics = METRICS[args.part]
    first = next(iter(results.values()))[-1]
    summary = {"init": init, "base": BASE, "steps": args.steps, "batch": args.batch, "seeds": args.seeds,
               "eval_samples": args.eval_samples, "eval_seed": 1, "init_metrics": {m: first[m] for m in metrics},
               "variants": {n: {m: [r[s][m] for s in range(args.seeds)] for m in metrics} for n, r in results.items()}}
    atomic_write_json(Path(args.out) / f"{args.part}.json", summary)

    cmd = " ".join(["python"] + [shlex.quote(a) for a in sys.argv])
    lines = [f"## ECT post-training from a CMT student: ablation ({args.part})", "",
             f"One CMT student (`{init}`), ECT for {args.steps} steps at batch {args.batch}, {args.seeds} training "
             f"seeds per variant; metrics of the EMA student on {args.eval_samples} samples of evaluation seed 1 "
             "(the same noise for every run), mean ± std over training seeds. Each variant changes one setting of "
             "the base: " + ", ".join(f"{k} {v}" for k, v in BASE.items()) + ".", "",
             "| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|",
             "| the init (step 0) | " + " | ".join(f"{first[m]:.4g}" for m in metrics) + " |"]
    for n, r in results.items():
        lines.append(f"| {n} | " + " | ".join(fmt([r[s][m] for s in range(args.seeds)], 4, 2) for m in metrics) + " |")
    lines += ["", f"Command: `{cmd}`; {minutes:.0f} min of wall time over its {len(names) * args.seeds} runs, one "
              f"thread each, on 2 CPU cores shared with other jobs (load average {os.getloadavg()[2]:.1f} when "
              "this section was written)."]
    write_section(args.doc, f"ect-ablation:{args.part}", "\n".join(lines))
    print("\n".join(lines))


def gmm_args(args) -> argparse.Namespace:
    """init_comparison.py's mixture settings (its teacher and CMT student), with this run's teacher time scale."""
    return comparison_parser().parse_args(["--gmm-time-scale", str(args.gmm_time_scale)])


def cmt_init(args, steps: int) -> Path:
    """A CMT student mid-trained for `steps`, made once and reused: gmm as init_comparison.py makes its own,
    digits with midtrain_quality.py's pinned base settings on --store."""
    if args.part == "gmm":
        return gmm_cmt(gmm_args(args), Path(args.out) / "gmm-cmt", steps)[1]
    mid = Path(args.out) / "digits-cmt" / f"mid-{steps}"
    if not done(mid, "model.ckpt"):
        mid_train(load_config(MidTrainConfig, **{**MID_BASE, **QUIET, "data": args.store, "out": str(fresh(mid)),
                                                 "holdout": 256, "steps": steps, "eval_every": steps,
                                                 "checkpoint_every": steps}), progress=False)
    return mid


def mid_budgets(args, names: list[str], budgets: list[int]) -> None:
    """The variants from CMT inits mid-trained for each budget: step 0 (the init) against the end, per seed."""
    data = "gmm:gmm8x8" if args.part == "gmm" else "digits"
    results = {}
    for b in budgets:
        mid = cmt_init(args, b)
        for n in names:
            results[b, n] = run_variant(args, f"mid{b} {n}", VARIANTS[n], data, str(mid / "model.ckpt"))
    seeds = range(args.seeds)
    metrics = METRICS[args.part]
    made = ("init_comparison.py's mixture teacher and store; CMT students mid-trained for each budget (8 "
            "trajectories x all points per step, lr 1e-3 linear decay over the budget, EMA 0.99)" if args.part == "gmm"
            else f"the store `{args.store}`; CMT students mid-trained from the built-in teacher for each budget with "
                 "benchmarks/midtrain_quality.py's base settings (" + ", ".join(f"{k} {v}" for k, v in MID_BASE.items())
                 + ")")
    atomic_write_json(Path(args.out) / f"{args.part}-mid-budgets.json", {
        "base": BASE, "steps": args.steps, "batch": args.batch, "eval_samples": args.eval_samples, "eval_seed": 1,
        "runs": [{"mid_steps": b, "variant": n, "init": {m: r[-1][m] for m in metrics},
                  "end": {m: [r[s][m] for s in seeds] for m in metrics}} for (b, n), r in results.items()]})
    cmd = " ".join(["python"] + [shlex.quote(a) for a in sys.argv])
    minutes = sum(stage_seconds(run_dir(args, f"mid{b} {n}", k)) for b, n in results for k in seeds) / 60
    lines = [f"## ECT post-training from CMT students at several mid-training budgets ({args.part})", "",
             f"{made}; then ECT for {args.steps} steps at batch {args.batch}, training seeds 0-{args.seeds - 1}. Base: "
             + ", ".join(f"{k} {v}" for k, v in BASE.items()) + "; the variants change "
             + "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in VARIANTS[n].items()) for n in names)
             + (" (warmup_steps -1: a tenth of the steps)" if any(VARIANTS[n].get("warmup_steps") == -1 for n in names)
                else "") + f". Metrics of the EMA student on {args.eval_samples} samples of evaluation seed 1, "
             "mean ± std "
             "over training seeds; change = end - init per seed (the same evaluation noise).", "",
             "| mid-training steps | ECT variant | " + " | ".join(f"{m} init -> end (change)" for m in metrics) + " |",
             "|---" * (len(metrics) + 2) + "|"]
    for (b, n), r in results.items():
        cells = [f"{r[-1][m]:.4g} -> {fmt([r[s][m] for s in seeds], 3, 2)} "
                 f"({fmt([r[s][m] - r[-1][m] for s in seeds], 2, 2)})" for m in metrics]
        lines.append(f"| {b} | {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{cmd}`; {minutes:.0f} min of wall time over its {len(results) * args.seeds} "
              f"post-training runs (plus {len(budgets)} short mid-training runs), one thread each, on 2 CPU cores "
              f"shared with other jobs (load average {os.getloadavg()[2]:.1f} when this section was written)."]
    write_section(args.doc, f"ect-ablation:{args.part}-mid-budgets", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
