"""MeanFlow post-training from a MeanFlow-flavour mid-training, measured on digits (issue 12, item 3).

Mid-trains one MeanFlow-flavour student (`flavour = "mf"`: the average velocity u(z, r, t) regressed onto the
secant of pairs of points of the same stored trajectory) from the built-in teacher on a stored trajectory
dataset, with configs/digits.toml's [mid_train] settings except the flavour and the distance (l2: the mf loss is a
plain mean squared error; mid-training refuses any other distance for mf), then post-trains it with MeanFlow
(`objective = "meanflow"`, data digits) for --post-steps steps in a few variants, each changing one setting of the
base: configs/digits.toml's [post_train] (batch 64, RAdam lr 1e-5 after a 30-step warm-up, constant, EMA 0.99)
with objective meanflow and the project's MeanFlow defaults (noise LogNormal(-0.4, 1.0), r != t for 25% of the
samples, adaptive weight power 1).

Every student (the mid-trained one and each post-trained one) is scored under the project's protocol: digits FD
and KID on 5000 samples at 1 and 2 steps, evaluation seeds 1, 2, 3, mean ± std; and since every student is
sampled from the same evaluation noise, the per-seed paired differences post - mid are reported too. Writes run
folders under --out, OUT/meanflow-quality.json and the section `<!-- meanflow-quality:digits -->` of
docs/results.md.

    python benchmarks/studies/meanflow_quality.py --store /tmp/mq/trajectories --out /tmp/mfq
    python benchmarks/studies/meanflow_quality.py --store /tmp/mq/trajectories --out /tmp/mfq-og --mid-off-grid 0.5 \
        --section digits-off-grid     # the sources between grid sigmas, as the CM flavour's --off-grid

Finished runs and scores are reused (delete a run folder to redo it). A study (benchmarks/studies/: kept
reproducible, not maintained); it puts benchmarks/ on sys.path for midtrain_quality.py's pinned settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from cmt_pipeline.config import EvaluateConfig, MidTrainConfig, PostTrainConfig, load_config
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.evaluation.run import RESULTS, evaluate
from cmt_pipeline.pipeline import store_done
from cmt_pipeline.stores import open_store
from cmt_pipeline.training.midtrain import mid_train
from cmt_pipeline.training.posttrain import DEFAULT_NOISE, post_train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, where midtrain_quality.py is
from midtrain_quality import BASE, QUIET, ROOT  # noqa: E402  (its pinned run settings)

# configs/digits.toml's [mid_train] and [post_train] as they were when this study ran, pinned so its numbers stay
# reproducible when the config moves on
MID = {**BASE, "flavour": "mf", "eval_every": 300, "checkpoint_every": 300}
POST = dict(objective="meanflow", data="digits", batch_size=64, optimizer="radam", lr=1e-5, warmup_steps=30,
            lr_schedule="constant", ema_decay=0.99, checkpoint_every=100)
VARIANTS = {
    "base (lr 1e-5 after 30 warm-up steps)": {},  # configs/digits.toml's [post_train] with objective meanflow
    "lr 1e-4 linear decay (no warm-up)": dict(lr=1e-4, warmup_steps=0, lr_schedule="linear"),
    # the loss is w L^2 with L the summed squared error and w = 1 / (L^2 + c)^p (sony/mf-rae's form): p 0.5 is the
    # plain squared error (gradient 2 grad L while c << L^2), p 0 would weight by L^2 (a fourth power)
    "adaptive_p 0.5 (plain squared error)": dict(adaptive_p=0.5),
    "r_fraction 0.75": dict(r_fraction=0.75),
    "r_fraction 1 (no plain flow-matching samples)": dict(r_fraction=1.0),
}
METRICS = ("digits_fd", "digits_kid")
# CM-flavour mid students on the same store, 1800 steps of 8 x 8 points, scored under the same protocol
# (docs/results.md, midtrain-quality:budget-2x; the huber one is also the default pipeline's mid student)
CM_MID = {"l2": {"1": "14.87 ± 0.66", "2": "4.41 ± 0.83", "heldout": "0.0195"},
          "huber": {"1": "12.54 ± 0.80", "2": "4.17 ± 0.87", "heldout": "0.0174"}}


def folder(name: str) -> str:
    return name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")


def score(ckpt: Path, out: Path, args) -> dict:
    """1- and 2-step scores of a student under the protocol, reused when already written."""
    final = {}
    for n in (1, 2):
        path = out / f"eval-{n}step"
        r = json.loads((path / RESULTS).read_text()) if (path / RESULTS).exists() else None
        if r is None or r["config"]["num_samples"] != args.eval_samples or len(r["seeds"]) != args.eval_seeds:
            t0 = time.perf_counter()
            r = evaluate(EvaluateConfig(student=str(ckpt), steps=n, num_samples=args.eval_samples,
                                        seeds=args.eval_seeds, seed=1, out=str(path), device="cpu"), progress=False)
            (path / "seconds.json").write_text(json.dumps(time.perf_counter() - t0))
            print(f"   scored {n}-step in {time.perf_counter() - t0:.0f} s", flush=True)
        spent = path / "seconds.json"
        final[str(n)] = {"seconds": json.loads(spent.read_text()) if spent.exists() else None,
                         "metrics": {k: r["metrics"].get(k) for k in ("digits_fd", "digits_fd_std", "digits_kid",
                                                                       "digits_kid_std")},
                         "per_seed": [{"seed": s["seed"], **{k: s[k] for k in METRICS}} for s in r["per_seed"]]}
    return final


def trained(run: Path, train_fn, cfg, args, what: str) -> dict:
    """Run a stage once (its train.json marks it done) and return what it recorded."""
    done = run / "train.json"
    if not done.exists():
        print(f"== {what}: {cfg.steps} steps", flush=True)
        out = train_fn(cfg, progress=args.progress)
        done.write_text(json.dumps({"seconds": out["seconds"], "threads": torch.get_num_threads(),
                                    "steps": cfg.steps, "loss": out.get("loss")}))
    return json.loads(done.read_text())


def mid(args, data: Path) -> dict:
    run = Path(args.out) / "mid-mf"
    cfg = load_config(MidTrainConfig, **{**MID, **QUIET, "seed": args.seed, "data": str(data), "out": str(run),
                                         "holdout": 256, "steps": args.mid_steps, "off_grid": args.mid_off_grid})
    summary = trained(run, mid_train, cfg, args, "mid-training (mf)")
    held = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    return {"name": "mid-mf", "config": dataclasses.asdict(cfg), "ckpt": str(run / "model.ckpt"), **summary,
            "heldout_mse": [(r["step"], r["teacher_mse"]) for r in held], "final": score(run / "model.ckpt", run, args)}


def post(args, name: str, overrides: dict, init: str) -> dict:
    run = Path(args.out) / "post" / folder(name)
    cfg = load_config(PostTrainConfig, **{**POST, **QUIET, "seed": args.seed, "init": init, "out": str(run),
                                          "eval_samples": args.eval_samples, "steps": args.post_steps, **overrides})
    summary = trained(run, post_train, cfg, args, f"post-training (meanflow) {name}")
    return {"name": name, "overrides": overrides, "config": dataclasses.asdict(cfg), **summary,
            "final": score(run / "model.ckpt", run, args)}


def pm(m: dict, key: str, fmt: str = ".2f") -> str:
    return f"{m[key]:{fmt}} ± {m[key + '_std']:{fmt}}"


def paired(row: dict, base: dict, n: str, key: str) -> tuple[float, float, list[float]]:
    """Per evaluation seed post - mid of `key` (the same noise for both), its mean and std."""
    b = {s["seed"]: s[key] for s in base["final"][n]["per_seed"]}
    d = [s[key] - b[s["seed"]] for s in row["final"][n]["per_seed"]]
    return statistics.mean(d), statistics.stdev(d) if len(d) > 1 else 0.0, d


def render(args, m: dict, rows: list[dict], data: Path, wall: float) -> str:
    plan = open_store(data).plan
    c = m["config"]
    base = rows[0]["config"] if rows else {}
    noise = DEFAULT_NOISE["meanflow"] if base.get("p_mean") is None else (base["p_mean"], base["p_std"])
    seeds = ", ".join(str(s) for s in range(1, args.eval_seeds + 1))
    lines = [
        "### MeanFlow post-training from a MeanFlow-flavour mid-training (digits"
        + (f", sources off the grid: off_grid {c['off_grid']:g}" if c.get("off_grid") else "") + ")",
        "",
        f"Mid-training: the MeanFlow flavour (`flavour = \"mf\"`) from the built-in teacher on one stored dataset "
        f"({plan['num_samples']} DPM-Solver++(3) x 16 trajectories, the last {c['holdout']} held out), "
        f"configs/digits.toml's [mid_train] of the time except the flavour and the distance: {c['steps']} steps of "
        f"{c['batch_size']} trajectories x {c['pairs_per_traj']} (t, r) pairs, {c['optimizer']} lr {c['lr']:g} "
        f"{c['lr_schedule']}, EMA {c['ema_decay']}, "
        + (f"a share {c['off_grid']:g} of the pairs' sources moved to a random sigma between their grid sigma and "
           "the next point's (`--off-grid`), " if c.get("off_grid") else "")
        + "distance l2 (the mf loss is a plain mean squared error of "
        "velocities; mid-training refuses the default's pseudo-Huber for mf), training seed "
        f"{c['seed']}. Post-training: MeanFlow (`objective = \"meanflow\"`, data digits) from that checkpoint for "
        f"{args.post_steps} steps; each variant changes one setting of the base, configs/digits.toml's "
        f"[post_train] of the time with objective meanflow (batch {base.get('batch_size')}, {base.get('optimizer')} "
        f"lr {base.get('lr', 0):g}, "
        f"warm-up {base.get('warmup_steps')}, {base.get('lr_schedule')}, EMA {base.get('ema_decay')}; MeanFlow "
        f"noise LogNormal{noise}, r != t for {base.get('r_fraction')} of the samples, adaptive weight power "
        f"{base.get('adaptive_p')}).",
        "",
        f"Scores: digits FD and KID of the EMA student on {args.eval_samples} samples, mean ± std over evaluation "
        f"seeds {seeds} (the teacher, dpm3 x 16, under the same protocol: FD 3.49 ± 0.63, the "
        "configs/digits.toml run in \"The default pipeline under the 5000-sample, 3-seed protocol\"). Every student "
        "is sampled from the same evaluation noise, so \"post - mid\" is the per-seed paired difference of FD, "
        "listed per seed and as mean ± std over the seeds.",
        "",
        "| student | train s (threads) | 1-step FD | 2-step FD | 1-step KID | 2-step KID | 1-step FD post - mid "
        f"(seeds {seeds}) | 2-step FD post - mid (seeds {seeds}) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [m] + rows:
        f1, f2 = r["final"]["1"]["metrics"], r["final"]["2"]["metrics"]
        cells = [f"mid-mf, {m['steps']} steps" if r is m else f"post: {r['name']}",
                 f"{r['seconds']:.0f} ({r['threads']})", pm(f1, "digits_fd"), pm(f2, "digits_fd"),
                 pm(f1, "digits_kid", ".0f"), pm(f2, "digits_kid", ".0f")]
        for n in ("1", "2"):
            if r is m:
                cells.append("")
            else:
                mean, std, d = paired(r, m, n, "digits_fd")
                cells.append(f"{mean:+.2f} ± {std:.2f} ({', '.join(f'{x:+.2f}' for x in d)})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"For comparison, CM-flavour mid students on the same store after the same {c['steps']} steps "
              "(8 trajectories x 8 points = 64 point-passes per step, half the mf flavour's 8 x 16 pairs; the "
              "`budget-2x` section below): l2 1-step FD " + CM_MID["l2"]["1"] + ", 2-step " + CM_MID["l2"]["2"]
              + ", held-out MSE " + CM_MID["l2"]["heldout"] + "; pseudo-Huber (the default pipeline's) "
              + CM_MID["huber"]["1"] + ", " + CM_MID["huber"]["2"] + ", " + CM_MID["huber"]["heldout"]
              + ". Held-out 1-step MSE of the mf mid student against the teacher's own 16-step sample (256 "
              "held-out trajectories), by step: " + ", ".join(f"{s}: {v:.4f}" for s, v in m["heldout_mse"]) + "."]
    cmd = " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?"), "python"]
                   + [shlex.quote(a) for a in sys.argv])
    spent = sum(r["seconds"] for r in [m] + rows) + sum(r["final"][n]["seconds"] or 0 for r in [m] + rows
                                                          for n in ("1", "2"))
    lines += ["", f"Command: `{cmd}`; {spent / 60:.0f} min of wall time summed over the stages (training "
              f"{m['seconds'] / 60:.0f} min mid, {sum(r['seconds'] for r in rows) / 60:.0f} min post, the rest "
              f"scoring; this invocation {wall / 60:.0f} min, reusing what it found finished), one thread, on 2 CPU "
              "cores shared with another job "
              f"(load average {os.getloadavg()[2]:.1f} over the 15 minutes before this section was written). "
              "train s is the training loop's wall time including post-training's own step-0 and final "
              f"{args.eval_samples}-sample evaluations on seed 1; the protocol scoring is not included."]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a finished digits trajectory store (read only)")
    p.add_argument("--out", default="runs/meanflow-quality")
    p.add_argument("--mid-steps", type=int, default=1800)
    p.add_argument("--mid-off-grid", type=float, default=0.0, help="mid-training's --off-grid (mf: the sources)")
    p.add_argument("--post-steps", type=int, default=300)
    p.add_argument("--variants", default="", help="comma-separated names (default: all)")
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--eval-seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--section", default="digits", help="docs section meanflow-quality:SECTION")
    p.add_argument("--doc", default=str(ROOT / "docs/results.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; known: {list(VARIANTS)}")
    data = Path(args.store)
    if not store_done(data):
        raise SystemExit(f"--store {data} is not a finished trajectory store")
    t0 = time.perf_counter()
    m = mid(args, data)
    print(json.dumps({"name": "mid-mf", "seconds": m["seconds"], "final": m["final"]}), flush=True)
    rows = []
    for name in names:
        rows.append(post(args, name, VARIANTS[name], m["ckpt"]))
        print(json.dumps({k: rows[-1][k] for k in ("name", "seconds", "final")}), flush=True)
    wall = time.perf_counter() - t0
    (Path(args.out) / "meanflow-quality.json").write_text(json.dumps({"mid": m, "post": rows}, indent=1))
    write_section(args.doc, f"meanflow-quality:{args.section}", render(args, m, rows, data, wall))


if __name__ == "__main__":
    main()
