"""The quality run of docs/results.md over several training seeds (issue 12): is the digits student's distance to
its teacher a property of the recipe, or of one lucky seed?

For each training seed N, from one finished trajectory store:
1. mid-training: `benchmarks/midtrain_quality.py --variants 'pseudo-Huber + off-grid 0.5' --budget 288000 --seed N`
   (4500 steps of its pinned base with pseudo-Huber and half the points between grid sigmas);
2. post-training: `cmt post-train --config configs/digits.toml --steps 900 --seed N` from that student (ECT, constant
   lr after the warm-up: the 900-step run of the quality run);
3. scoring: `cmt evaluate --steps 1|2 --num-samples 5000 --seeds 3` (evaluation seeds 1, 2, 3).
Then one table: each training seed's mean ± std over evaluation seeds, and the mean ± std over training seeds of those
means, beside the teacher's FD under the same protocol. Written to the section `<!-- quality-run:seeds -->` of
docs/results.md.

    cmt generate-trajectories --config configs/digits.toml --num-samples 65792 --out STORE     # 19 min, once
    python benchmarks/quality_run.py --store STORE --out runs/quality-run --seeds 0,1,2

Each seed takes about 35 minutes on one thread; finished stages are reused, so seeds can run in parallel as separate
invocations (`--seeds 1`, `--seeds 2`) and a last call with every seed writes the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from cmt_pipeline.docs_sections import write_section

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "pseudo-Huber + off-grid 0.5"
TEACHER_FD = (3.49, 0.63)  # docs/results.md, "Evaluation spread": dpm3 x 16, 5000 samples, evaluation seeds 1-3


def sh(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        if subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)} (log: {log})")


def run_seed(store: str, out: Path, seed: int) -> dict:
    """Mid-train, post-train and score one training seed (each stage reused when finished)."""
    out.mkdir(parents=True, exist_ok=True)
    mid = out / "mid" / VARIANT.replace(" ", "_") / "model.ckpt"
    if not (mid.parent / "quality.json").exists():
        sh([sys.executable, "benchmarks/midtrain_quality.py", "--out", str(out), "--store", store, "--section", "mid",
            "--variants", VARIANT, "--budget", "288000", "--evals", "1", "--seed", str(seed),
            "--doc", str(out / "mid.md")], out / "mid.log")
    post = out / "post"
    if not (post / "metrics.json").exists():
        sh(["cmt", "post-train", "--config", "configs/digits.toml", "--init", str(mid), "--steps", "900",
            "--seed", str(seed), "--eval-every", "300", "--eval-samples", "2000", "--out", str(post),
            "--no-tensorboard"], out / "post.log")
    scores = {"mid": json.loads((mid.parent / "quality.json").read_text())["final"]}
    scores["post"] = {}
    for n in (1, 2):
        ev = post / f"eval-{n}step"
        if not (ev / "evaluation.json").exists():
            sh(["cmt", "evaluate", "--student", str(post / "model.ckpt"), "--steps", str(n), "--num-samples", "5000",
                "--seeds", "3", "--out", str(ev)], out / f"eval-{n}.log")
        m = json.loads((ev / "evaluation.json").read_text())["metrics"]
        scores["post"][str(n)] = {"digits_fd": m["digits_fd"], "digits_fd_std": m["digits_fd_std"]}
    return scores


def render(results: dict[int, dict]) -> str:
    tf = TEACHER_FD[0]
    lines = ["| training seed | mid 1-step | mid 2-step | + ECT 900, 1-step | + ECT 900, 2-step |",
             "|---|---:|---:|---:|---:|"]
    cell = lambda d: f"{d['digits_fd']:.2f} ± {d['digits_fd_std']:.2f}"  # noqa: E731
    for seed, s in sorted(results.items()):
        lines.append(f"| {seed} | {cell(s['mid']['1'])} | {cell(s['mid']['2'])} | {cell(s['post']['1'])} | "
                     f"{cell(s['post']['2'])} |")
    agg = []
    for stage in ("mid", "post"):
        for n in ("1", "2"):
            v = [s[stage][n]["digits_fd"] for s in results.values()]
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            agg.append(f"**{statistics.mean(v):.2f} ± {sd:.2f}** ({statistics.mean(v) / tf:.2f}x)")
    lines.append(f"| mean ± std over {len(results)} training seeds (/ teacher) | " + " | ".join(agg) + " |")
    return ("Digits FD, 5000 samples; a cell is the mean ± std over evaluation seeds 1, 2, 3; the last row is the mean "
            f"± std over training seeds of those means. Teacher (dpm3 x 16, same protocol): {tf} ± {TEACHER_FD[1]}; "
            f"targets: 1-step <= 1.5x = {1.5 * tf:.2f}, 2-step <= 1.2x = {1.2 * tf:.2f}.\n\n" + "\n".join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a finished digits trajectory store (65,792 in the docs' run)")
    p.add_argument("--out", default="runs/quality-run")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--doc", default=str(ROOT / "docs/results.md"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {s: run_seed(args.store, Path(args.out).resolve() / f"seed{s}", s) for s in seeds}
    print(json.dumps(results, indent=1))
    if len(seeds) > 1:
        write_section(args.doc, "quality-run:seeds", render(results))


if __name__ == "__main__":
    main()
