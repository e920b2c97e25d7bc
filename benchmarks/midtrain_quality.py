"""Mid-training quality against compute (issue 12, item 4): which mid-training settings buy the most 1- and 2-step
quality per unit of compute, and where a long run of the default settings stands.

Every variant changes one setting of BASE (configs/digits.toml's [mid_train] when this study began, pinned here so
the recorded numbers stay reproducible when the config moves on) and trains from the built-in teacher on one
stored trajectory dataset for the same compute budget, counted in point-passes (a student forward + backward on one
trajectory point: batch_size x points per trajectory per step), so a variant that uses twice the points per step
gets half the steps. Along the way the EMA student's 1- and 2-step digits FD is measured on --eval-samples samples
of evaluation seed 1 (the same noise at every point, so the curve's steps are paired); at the end each student is
scored under the project's protocol (5000 samples, evaluation seeds 1, 2, 3, mean ± std), and its 1-step MSE to the
teacher's samples is measured on 256 trajectories it trained on and on the 256 held out (a gap between the two is
memorisation: a bigger --store is the cure, not more steps). Writes run folders under
--out, OUT/<section>.json, the figure docs/images/<section>.png and its section of docs/results.md
(`<!-- midtrain-quality:<section> -->`).

    python benchmarks/midtrain_quality.py                                   # the ablation, 57,600 point-passes each
    python benchmarks/midtrain_quality.py --section long --variants base --budget 576000 --evals 10

Finished runs are reused (delete a run folder to redo it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from cmt_pipeline.config import EvaluateConfig, GenerateConfig, MidTrainConfig, PostTrainConfig, load_config
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.evaluation.run import evaluate
from cmt_pipeline.models.io import load_model, model_from_checkpoint
from cmt_pipeline.generation import generate
from cmt_pipeline.pipeline import store_done
from cmt_pipeline.plotting import save_curves
from cmt_pipeline.stores import open_store, read_head, read_tail
from cmt_pipeline.training.loop import EvalLog
from cmt_pipeline.training.midtrain import holdout_error, mid_train
from cmt_pipeline.training.posttrain import FewStepEval

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(device="cpu", tensorboard=False, sample_every=0, log_every=50, keep_checkpoints=1)
BASE = dict(flavour="cm", init="teacher", batch_size=8, points_per_traj=8, optimizer="radam", lr=2e-4,
            lr_schedule="linear", ema_decay=0.99, distance="l2")
VARIANTS = {
    "base": {},  # 8 trajectories x 8 points, RAdam lr 2e-4 linear decay, EMA 0.99, l2
    "base (training seed 1)": dict(seed=1),  # the spread over training seeds: what a one-seed difference must beat
    "base (training seed 2)": dict(seed=2),
    "all 16 points": dict(points_per_traj=0),
    "batch 16": dict(batch_size=16),
    "lr 5e-4": dict(lr=5e-4),
    "lr 1e-4": dict(lr=1e-4),
    "constant lr": dict(lr_schedule="constant"),
    "EMA 0.999": dict(ema_decay=0.999),
    "pseudo-Huber (c 0.03)": dict(distance="huber", huber_c=0.03),
    # EDM's ramp-up with a half-life too long to bind: the average spans the last 5% of the samples seen
    "EMA half-life 5% of samples (EDM ramp-up)": dict(ema_halflife=1e9, ema_rampup=0.05),
    "pseudo-Huber + EMA ramp-up": dict(distance="huber", huber_c=0.03, ema_halflife=1e9, ema_rampup=0.05),
    # half of the points between grid sigmas: smooth in sigma for ECT (benchmarks/studies/sigma_smoothness.py)
    "pseudo-Huber + off-grid 0.5": dict(distance="huber", huber_c=0.03, off_grid=0.5),
}
CURVE = ("1step_digits_fd", "2step_digits_fd")


def points_per_step(cfg: MidTrainConfig, k: int) -> int:
    return cfg.batch_size * (cfg.points_per_traj or k)


def store(args) -> Path:
    path = Path(args.store or Path(args.out) / "trajectories")
    if not store_done(path):
        if args.store:
            raise SystemExit(f"--store {path} is not a finished trajectory store")
        generate(load_config(GenerateConfig, ROOT / "configs/digits.toml", "generate",
                             num_samples=args.trajectories + 256, out=str(path), device="cpu"), progress=True)
    return path


def run_folder(out, section: str, name: str) -> Path:
    """Where a variant's run lives: OUT/<section>/<name, spaces as _, no brackets>."""
    return Path(out) / section / name.replace(" ", "_").replace("(", "").replace(")", "")


def run_variant(args, name: str, overrides: dict, data: Path) -> dict:
    """Train (or reuse) one variant; returns its curve, compute and final scores."""
    run = run_folder(args.out, args.section, name)
    k = len(open_store(data).plan["sigmas"]) - 1
    cfg = load_config(MidTrainConfig, **{**BASE, **QUIET, "seed": args.seed, **overrides, "data": str(data),
                                         "out": str(run), "holdout": 256})
    per_step = points_per_step(cfg, k)
    steps = max(1, args.budget // per_step)
    every = max(1, steps // args.evals)
    cfg = dataclasses.replace(cfg, steps=steps, eval_every=every, checkpoint_every=every)
    result = run / "quality.json"
    if result.exists():
        return with_gap(json.loads(result.read_text()), run, data, result)

    fd = FewStepEval(PostTrainConfig(eval_samples=args.eval_samples, data="digits"), (1, 8, 8), torch.device("cpu"))
    spent = [0.0]

    def timed(model):
        t0 = time.perf_counter()
        try:
            return fd(model)
        finally:
            spent[0] += time.perf_counter() - t0

    run.mkdir(parents=True, exist_ok=True)
    (run / "fd.jsonl").unlink(missing_ok=True)
    out = mid_train(cfg, callbacks=[EvalLog(timed, run / "fd.jsonl", every)], progress=args.progress)
    train_seconds = out["seconds"] - spent[0]
    curve = [json.loads(line) for line in (run / "fd.jsonl").read_text().splitlines()]
    held = {r["step"]: r["teacher_mse"] for r in map(json.loads, (run / "eval.jsonl").read_text().splitlines())}
    final = {}
    for n in (1, 2):
        m = evaluate(EvaluateConfig(student=str(run / "model.ckpt"), steps=n, num_samples=5000, seeds=3,
                                    out=str(run / f"eval-{n}step"), device="cpu"), progress=False)["metrics"]
        final[str(n)] = {key: m.get(key) for key in ("digits_fd", "digits_fd_std", "digits_kid", "digits_kid_std")}
    summary = {"name": name, "overrides": overrides, "steps": steps, "points_per_step": per_step,
               "train_seconds": train_seconds, "threads": torch.get_num_threads(),
               "curve": [{**r, "points": r["step"] * per_step, "heldout_mse": held.get(r["step"])} for r in curve],
               "final": final}
    return with_gap(summary, run, data, result)


def with_gap(summary: dict, run: Path, data: Path, result: Path) -> dict:
    """The final EMA student's 1-step MSE on 256 trajectories it trained on (the store's first) and on the 256 held
    out (its last), measured once and kept in quality.json (runs made before this was measured get it here)."""
    if "gap" not in summary:
        student = model_from_checkpoint(load_model(run / "model.ckpt"))
        measure = holdout_error(read_tail(data, 256), open_store(data).plan["sigmas"][0], None,
                                read_head(data, 256))
        summary["gap"] = measure(student)
    result.write_text(json.dumps(summary, indent=1))
    return summary


def render(args, rows: list[dict], data: Path) -> str:
    plan = open_store(data).plan
    lines = [
        f"One stored dataset of the built-in teacher ({plan['num_samples']} DPM-Solver++(3) x 16 trajectories, the "
        f"last 256 held out); each variant changes one setting of the base ("
        + ", ".join(f"{k} {v}" for k, v in BASE.items()) + f"; configs/digits.toml's [mid_train] when the study "
        f"began) and trains for {args.budget:,} point-passes (student forward + backward on one trajectory point), training seed "
        f"{args.seed} unless it says otherwise. Final scores: digits FD and KID on 5000 samples, mean ± std over evaluation seeds 1, 2, 3 "
        "(the teacher, dpm3 x 16: FD 3.49 ± 0.63 under the same protocol). Held-out MSE: the 1-step student against "
        "the teacher's own 16-step sample on the 256 held-out trajectories; trained-on MSE: the same on 256 trajectories it "
        "trained on (the store's first).",
        "",
        "| variant | steps | points / step | train s (threads) | held-out MSE | trained-on MSE | 1-step FD | 2-step FD |"
        " 1-step KID | 2-step KID |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f1, f2 = r["final"]["1"], r["final"]["2"]
        lines.append(f"| {r['name']} | {r['steps']} | {r['points_per_step']} | {r['train_seconds']:.0f} "
                     f"({r['threads']}) | {r['gap']['teacher_mse']:.4f} | {r['gap']['train_mse']:.4f} | "
                     f"{f1['digits_fd']:.2f} ± {f1['digits_fd_std']:.2f} | {f2['digits_fd']:.2f} ± "
                     f"{f2['digits_fd_std']:.2f} | {f1['digits_kid']:.0f} ± {f1['digits_kid_std']:.0f} | "
                     f"{f2['digits_kid']:.0f} ± {f2['digits_kid_std']:.0f} |")
    lines += ["", f"Curve (evaluation seed 1, {args.eval_samples} samples; point-passes in thousands -> 1-step / "
              "2-step FD, held-out MSE):", ""]
    for r in rows:
        points = ", ".join(f"{c['points'] / 1000:g}k: {c['1step_digits_fd']:.2f} / {c['2step_digits_fd']:.2f} "
                           f"({c['heldout_mse']:.4f})" for c in r["curve"])
        lines.append(f"- {r['name']}: {points}")
    image = f"images/midtrain-quality-{args.section}.png"
    lines += ["", f"![FD against mid-training compute]({image})", ""]
    cmd = " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?"), "python"]
                   + [shlex.quote(a) for a in sys.argv])
    lines.append(f"Command: `{cmd}` (load average {os.getloadavg()[2]:.1f} over the 15 minutes before this section "
                 "was written; train s is wall time without the FD evaluations, on cores shared with other jobs whose load "
                 "varied: the budget, not the seconds, is what the variants share).")
    return "\n".join(lines)


def plot(args, rows: list[dict]) -> None:
    panels = {}
    for metric, title in zip(CURVE, ("1-step digits FD", "2-step digits FD")):
        panels[title] = {r["name"]: ([c["points"] / 1000 for c in r["curve"]], [c[metric] for c in r["curve"]])
                         for r in rows}
    save_curves(Path(args.doc).parent / f"images/midtrain-quality-{args.section}.png", panels,
                xlabel="point-passes (thousands)", ylabel=f"FD ({args.eval_samples} samples, seed 1)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/midtrain-quality")
    p.add_argument("--store", default="", help="a finished trajectory store (default: OUT/trajectories, made once)")
    p.add_argument("--trajectories", type=int, default=8192, help="training trajectories of a store made here")
    p.add_argument("--section", default="ablation")
    p.add_argument("--variants", default="", help="comma-separated names (default: all)")
    p.add_argument("--budget", type=int, default=57_600, help="point-passes per variant (base: 900 steps x 64)")
    p.add_argument("--evals", type=int, default=3, help="FD measurements along each run")
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--doc", default=str(ROOT / "docs/results.md"))
    args = p.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; known: {list(VARIANTS)}")
    data = store(args)
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        rows.append(run_variant(args, name, VARIANTS[name], data))
        print(json.dumps({k: rows[-1][k] for k in ("name", "steps", "train_seconds", "final")}), flush=True)
    (Path(args.out) / f"{args.section}.json").write_text(json.dumps(rows, indent=1))
    plot(args, rows)
    write_section(args.doc, f"midtrain-quality:{args.section}", f"### Mid-training quality against compute: "
                  f"{args.section}\n\n" + render(args, rows, data))


if __name__ == "__main__":
    main()
