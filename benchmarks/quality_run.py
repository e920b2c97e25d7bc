"""The quality run of docs/results.md over several training seeds (issue 12): is the digits student's distance to
its teacher a property of the recipe, or of one lucky seed?

For each training seed N, from one finished trajectory store:
1. mid-training: `benchmarks/midtrain_quality.py --variants 'pseudo-Huber + off-grid 0.5' --budget 288000 --seed N`
   (4500 steps of its pinned base with pseudo-Huber and half the points between grid sigmas; `--mid-budget 576000`
   for 9000);
2. post-training: `cmt post-train --config configs/digits.toml --steps 900 --seed N [--lr-schedule linear]` from
   that student (ECT as configs/digits.toml had it, pinned in ECT below; lr 1e-5 after its warm-up, constant or
   decaying linearly to 0: the quality run's two 900-step runs; `--schedules constant-600` adds configs/digits.toml's
   own 600 constant-lr steps);
3. scoring: `cmt evaluate --steps 1|2 --num-samples 5000 --seeds 3` (evaluation seeds 1, 2, 3).
Then one table: each training seed's mean ± std over evaluation seeds, and the mean ± std over training seeds of those
means (a schedule's cells are left empty for a seed not run with it), beside the teacher's FD under the same protocol.
Written to the section `<!-- quality-run:seeds -->` of docs/results.md (`--section`).

    cmt generate-trajectories --config configs/digits.toml --num-samples 65792 --out STORE     # 19 min, once
    python benchmarks/quality_run.py --store STORE --out runs/quality-run --seeds 0,1,2

Each seed takes about 35 minutes on one thread (55 with `--mid-budget 576000`); finished stages are reused, so seeds
can run in parallel as separate invocations (`--seeds 1`, `--seeds 2`) and a last call with every seed writes the
table. Side by side on 2 cores, give each invocation one thread (`OMP_NUM_THREADS=1`): two 2-thread processes ran
mid-training at 1.3 steps/s each instead of 5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from cmt_pipeline.docs_sections import write_section

from midtrain_quality import BASE, run_folder  # benchmarks/midtrain_quality.py, which trains the mid students

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "pseudo-Huber + off-grid 0.5"
POINTS_PER_STEP = BASE["batch_size"] * BASE["points_per_traj"]  # what --mid-budget counts, per mid-training step
TEACHER_FD = (3.49, 0.63)  # docs/results.md, "Evaluation spread": dpm3 x 16, 5000 samples, evaluation seeds 1-3
# configs/digits.toml's ECT recipe when these runs were made, pinned so that the recorded numbers survive its changes
ECT = ["--objective", "ect", "--data", "digits", "--batch-size", "64", "--optimizer", "radam", "--lr", "1e-5",
       "--warmup-steps", "30", "--ema-decay", "0.99", "--q", "4096", "--distance", "norm", "--dropout", "0"]
# ECT run name -> (run folder, lr schedule, steps)
POST = {"constant": ("post", "constant", 900), "linear": ("post-linear", "linear", 900),
        "constant-600": ("post-600", "constant", 600)}


def sh(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        if subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)} (log: {log})")


def run_seed(store: str, out: Path, seed: int, schedules: list[str], budget: int) -> dict:
    """Mid-train, post-train and score one training seed (each stage reused when finished)."""
    out.mkdir(parents=True, exist_ok=True)
    mid = run_folder(out, "mid", VARIANT) / "model.ckpt"
    done = mid.parent / "quality.json"
    if done.exists() and (spent := json.loads(done.read_text())["steps"] * POINTS_PER_STEP) != budget:
        raise SystemExit(f"{mid.parent} was mid-trained for {spent} point-passes, not --mid-budget {budget}; "
                         "give this budget its own --out")
    if not done.exists():
        sh([sys.executable, "benchmarks/midtrain_quality.py", "--out", str(out), "--store", store, "--section", "mid",
            "--variants", VARIANT, "--budget", str(budget), "--evals", "1", "--seed", str(seed),
            "--doc", str(out / "mid.md")], out / "mid.log")
    scores = {"mid": json.loads(done.read_text())["final"]}
    for schedule in schedules:
        folder, lr_schedule, steps = POST[schedule]
        post = out / folder
        if not (post / "metrics.json").exists():
            sh(["cmt", "post-train", "--config", "configs/digits.toml", *ECT, "--init", str(mid), "--steps", str(steps),
                "--lr-schedule", lr_schedule, "--seed", str(seed), "--eval-every", "300", "--eval-samples", "2000",
                "--out", str(post), "--no-tensorboard"], out / f"{folder}.log")
        scores[schedule] = {}
        for n in (1, 2):
            ev = post / f"eval-{n}step"
            if not (ev / "evaluation.json").exists():
                sh(["cmt", "evaluate", "--student", str(post / "model.ckpt"), "--steps", str(n), "--num-samples",
                    "5000", "--seeds", "3", "--out", str(ev)], out / f"{folder}-eval-{n}.log")
            m = json.loads((ev / "evaluation.json").read_text())["metrics"]
            scores[schedule][str(n)] = {"digits_fd": m["digits_fd"], "digits_fd_std": m["digits_fd_std"]}
    return scores


def render(results: dict[int, dict], budget: int) -> str:
    tf = TEACHER_FD[0]
    stages = [("mid", "mid")] + [(k, f"+ ECT {POST[k][2]}, {POST[k][1]} lr") for k in POST
                                 if any(k in s for s in results.values())]
    lines = ["| training seed | " + " | ".join(f"{label}, {n}-step" for _, label in stages for n in (1, 2)) + " |",
             "|---" + "|---:" * (2 * len(stages)) + "|"]
    for seed, s in sorted(results.items()):
        lines.append(f"| {seed} | " + " | ".join(
            f"{s[k][n]['digits_fd']:.2f} ± {s[k][n]['digits_fd_std']:.2f}" if k in s else ""
            for k, _ in stages for n in ("1", "2")) + " |")
    agg = []
    for k, _ in stages:
        for n in ("1", "2"):
            v = [s[k][n]["digits_fd"] for s in results.values() if k in s]
            sd = f"{statistics.stdev(v):.2f}" if len(v) > 1 else "-"
            agg.append(f"**{statistics.mean(v):.2f} ± {sd}** ({statistics.mean(v) / tf:.2f}x, {len(v)} seeds)")
    lines.append("| mean ± std over training seeds (/ teacher) | " + " | ".join(agg) + " |")
    return (f"Mid-training: {budget // POINTS_PER_STEP} steps of {POINTS_PER_STEP} points. Digits FD, 5000 samples; "
            "a cell is the mean ± std over evaluation seeds 1, 2, 3; the last row is the mean ± std over training "
            "seeds of those means. Teacher "
            f"(dpm3 x 16, same protocol): {tf} ± {TEACHER_FD[1]}; "
            f"targets: 1-step <= 1.5x = {1.5 * tf:.2f}, 2-step <= 1.2x = {1.2 * tf:.2f}.\n\n" + "\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a finished digits trajectory store (65,792 in the docs' run)")
    p.add_argument("--out", default="runs/quality-run")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--schedules", default="constant,linear", help="ECT runs: constant, linear (900 steps), "
                   "constant-600")
    p.add_argument("--mid-budget", type=int, default=288_000, help="mid-training point-passes (64 per step: 4500 "
                   "steps); a run folder made with another budget is refused, not reused")
    p.add_argument("--section", default="seeds", help="docs/results.md section: quality-run:<section>")
    p.add_argument("--doc", default=str(ROOT / "docs/results.md"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    schedules = [k for k in args.schedules.split(",") if k]
    unknown = sorted(set(schedules) - set(POST))
    if unknown:
        raise SystemExit(f"unknown --schedules {unknown}; known: {list(POST)}")
    results = {s: run_seed(args.store, Path(args.out).resolve() / f"seed{s}", s, schedules, args.mid_budget)
               for s in seeds}
    print(json.dumps(results, indent=1))
    if len(seeds) > 1:
        write_section(args.doc, f"quality-run:{args.section}", render(results, args.mid_budget))


if __name__ == "__main__":
    main()
