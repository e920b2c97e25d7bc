"""Compute to reach a fixed quality target from the diffusion weights, with and without Consistency Mid-Training
(issue 12, item 5), on the Gaussian mixture, where the exact flow map is known.

The paper's claim is about total training cost: CMT (generate the teacher's trajectories once, mid-train on them,
then post-train) reaches a given few-step quality for less compute than post-training the diffusion weights
directly. So both routes start from the same diffusion teacher and are stopped when the EMA student's 1-step MSE to
the exact flow map first falls to a fixed target, set as a multiple of the teacher's own 16-step solve's error on
the same noise (several multiples from the same runs):

- diffusion route: ECT from the teacher's weights with the q curriculum (q = 2 doubling over the run), evaluated
  every --eval-every steps for --post-steps steps;
- CMT route: trajectory generation (counted once, whatever the seed), then mid-training evaluated every
  --mid-eval-every steps. Where mid-training alone reaches the target, ECT adds no steps; the same ECT from the
  mid-trained student (same curriculum and budget as the diffusion route) is reported beside it, so one sees
  whether post-training keeps it there.

Compute is counted in forward-pass equivalents of the student network (a backward pass counted as two forwards):
ECT step = batch x (3 + 1: the target's no-grad forward), mid-training step = trajectories x points x 3,
generation = trajectories x solver NFE. Wall seconds are reported too. Training seeds 0 .. --seeds - 1.
Writes OUT/summary.json, docs/images/steps-to-target-gmm.png and the `<!-- steps-to-target:gmm -->` section of
docs/results.md (or --section's, and an image named after it).

    OMP_NUM_THREADS=1 python benchmarks/steps_to_target.py --out runs/steps-to-target
    OMP_NUM_THREADS=1 python benchmarks/steps_to_target.py --out runs/steps-to-target-ts1 --gmm-time-scale 1 \
        --section steps-to-target:gmm-ts1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from init_comparison import (QUIET, done, eval_rows, fmt, fresh, gmm_cmt, parser as comparison_parser, provenance,
                             stage_seconds, teacher_reference)

from cmt_pipeline.config import MidTrainConfig, PostTrainConfig
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.plotting import save_curves
from cmt_pipeline.stores import open_store
from cmt_pipeline.teachers import load_teacher
from cmt_pipeline.training.loop import EvalLog
from cmt_pipeline.training.midtrain import build_student, mid_train
from cmt_pipeline.training.posttrain import FewStepEval, post_train
from cmt_pipeline.files import atomic_write_json

METRIC = "1step_flow_map_mse"


def first_at_or_below(curve: dict[int, float], target: float) -> int | None:
    hit = [s for s in sorted(curve) if curve[s] <= target]
    return hit[0] if hit else None


def ect(args, init: str, run: Path, seed: int) -> dict[int, float]:
    """ECT with the q curriculum; {step: EMA 1-step flow-map MSE}."""
    if not done(run, "metrics.json"):
        post_train(PostTrainConfig(init=init, objective="ect", data="gmm:gmm8x8", gmm_samples=8192, seed=seed,
                                   steps=args.post_steps, batch_size=args.batch, lr=args.lr, ema_decay=args.ema,
                                   q=2.0, q_double_every=math.ceil(args.post_steps / (args.doublings + 1)),
                                   eval_every=args.eval_every, eval_samples=args.eval_samples,
                                   checkpoint_every=args.post_steps, out=str(fresh(run)), **QUIET), progress=False)
    return {s: r[METRIC] for s, r in eval_rows(run).items()}


def mid(args, store: Path, run: Path, seed: int) -> dict[int, float]:
    """CMT mid-training from the teacher; {step: EMA 1-step MSE to the exact flow map}, measured as post-training
    measures it (the same evaluation noise, written to few-step.jsonl; step 0, the teacher's weights as a
    consistency student, is the same for every seed and measured once)."""
    measure = FewStepEval(PostTrainConfig(eval_samples=args.eval_samples, data="gmm:gmm8x8"), (1, 8, 8), "cpu")
    if not done(run, "model.ckpt"):
        mid_train(MidTrainConfig(data=str(store), init="teacher", flavour="cm", holdout=256, steps=args.mid_steps,
                                 batch_size=8, lr=args.lr, ema_decay=args.ema, eval_every=args.mid_steps,
                                 checkpoint_every=args.mid_steps, seed=seed, out=str(fresh(run)), **QUIET),
                  progress=False, callbacks=[EvalLog(measure, run / "few-step.jsonl", args.mid_eval_every)])
    start = run.parent / "mid-step0.json"
    if not start.exists():
        teacher = load_teacher(open_store(store).plan["teacher"]["spec"])
        student = build_student(MidTrainConfig(data=str(store)), teacher, tuple(teacher.shape))
        atomic_write_json(start, {"step": 0, **measure(student)})
    rows = [json.loads(start.read_text())] + [json.loads(x) for x in (run / "few-step.jsonl").read_text().splitlines()]
    return {r["step"]: r[METRIC] for r in rows}


def seconds_per_step(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return statistics.median(1 / r["steps_per_s"] for r in rows if r.get("steps_per_s"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/steps-to-target")
    p.add_argument("--doc", default="docs/results.md")
    p.add_argument("--images", default="docs/images")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--targets", type=lambda s: [float(c) for c in s.split(",")], default=[2.0, 3.0, 4.0],
                   help="targets as multiples of the teacher's 16-step flow-map MSE")
    p.add_argument("--post-steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--mid-steps", type=int, default=400)
    p.add_argument("--mid-eval-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--doublings", type=int, default=7)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--gmm-time-scale", type=float, default=1000.0,
                   help="the mixture teacher's timestep scale (init_comparison.py's default is 1; 1000 made this "
                        "benchmark's documented sections)")
    p.add_argument("--section", default="steps-to-target:gmm",
                   help="the section of --doc to write; its image is --images/<section with - for :>.png")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.out)
    # init_comparison's teacher and store
    teacher_run, _ = gmm_cmt(comparison_parser().parse_args(["--gmm-time-scale", str(args.gmm_time_scale)]), root)
    store = root / "trajectories"
    plan = open_store(store).plan
    k, n_traj = len(plan["sigmas"]) - 1, plan["num_samples"]  # generated: the 256 held out as well
    teacher = load_teacher(str(teacher_run / "teacher"))
    teacher_mse = teacher_reference(args, teacher, load_teacher("gmm:gmm8x8"))["metrics"]["flow_map_mse"]

    # forward-pass equivalents of one step / of the whole generation
    cost = {"ect": args.batch * 4, "mid": 8 * k * 3, "generation": n_traj * plan["nfe_per_sample"]}
    runs = {"diffusion": {}, "CMT mid": {}, "CMT mid + ECT": {}}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        runs["diffusion"][seed] = ect(args, str(teacher_run / "model.ckpt"), root / f"ect-diffusion-seed{seed}", seed)
        m = root / f"mid-seed{seed}"
        runs["CMT mid"][seed] = mid(args, store, m, seed)
        runs["CMT mid + ECT"][seed] = ect(args, str(m / "model.ckpt"), root / f"ect-cmt-seed{seed}", seed)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    s_ect = statistics.median(seconds_per_step(root / f"ect-diffusion-seed{s}") for s in range(args.seeds))
    s_mid = statistics.median(seconds_per_step(root / f"mid-seed{s}") for s in range(args.seeds))
    gen_seconds = stage_seconds(store)

    rows = []
    for ratio in args.targets:
        target = ratio * teacher_mse
        diff = [first_at_or_below(c, target) for c in runs["diffusion"].values()]
        cmt = [first_at_or_below(c, target) for c in runs["CMT mid"].values()]
        row = {"ratio": ratio, "target": target, "diffusion_steps": diff, "mid_steps": cmt}
        if all(d is not None for d in diff) and all(c is not None for c in cmt):
            d_fe = [d * cost["ect"] for d in diff]
            c_fe = [cost["generation"] + c * cost["mid"] for c in cmt]
            c_s, d_s = [gen_seconds + c * s_mid for c in cmt], [d * s_ect for d in diff]
            row.update(diffusion_fe=d_fe, cmt_fe=c_fe, fe_ratio=[c / d if d else math.inf for c, d in zip(c_fe, d_fe)],
                       seconds_ratio=[c / d if d else math.inf for c, d in zip(c_s, d_s)])
        rows.append(row)
    summary = {"teacher_flow_map_mse": teacher_mse, "cost": cost, "trajectories": n_traj,
               "seconds_per_step": {"ect": s_ect, "mid": s_mid},
               "generation_seconds": gen_seconds, "rows": rows,
               "curves": {n: {str(s): c for s, c in r.items()} for n, r in runs.items()}, "args": vars(args)}
    atomic_write_json(root / "summary.json", summary)

    def band(name):
        seeds = runs[name]
        steps = sorted(set.intersection(*(set(c) for c in seeds.values())))
        values = [[seeds[s][t] for s in seeds] for t in steps]
        return steps, [statistics.mean(v) for v in values], [min(v) for v in values], [max(v) for v in values]

    image = Path(args.images) / image_name(args)
    save_curves(image, {"ECT from the diffusion weights / from the CMT student": {
        "diffusion + ECT": band("diffusion"), "CMT mid + ECT": band("CMT mid + ECT")},
        "CMT mid-training from the diffusion weights": {"CMT mid": band("CMT mid")}},
        xlabel="step", ylabel="1-step MSE to the exact flow map", target=args.targets[0] * teacher_mse)
    write_section(args.doc, args.section, render(args, summary, runs, root, teacher_run, store))


def image_name(args) -> str:
    return args.section.replace(":", "-") + ".png"


def per_seed(steps, budget: int) -> str:
    return " / ".join(f"not in {budget}" if s is None else str(s) for s in steps)


def render(args, summary, runs, root, teacher_run, store) -> str:
    c, t = summary["cost"], summary["teacher_flow_map_mse"]
    lines = [
        "## Compute to a fixed target: diffusion init vs CMT (gmm:gmm8x8"
        + (")" if args.gmm_time_scale == 1000 else f", timestep scale {args.gmm_time_scale:g})"),
        "",
        f"The mixture teacher of init_comparison.py (UNet [16, 32], timestep scale {args.gmm_time_scale:g}); its own 16-step DPM-Solver++(3) solve "
        f"has flow-map MSE {t:.4g} on the {args.eval_samples} evaluation noises (seed 1) every curve here is "
        "measured on.",
        f"Diffusion route: ECT from the teacher's weights, {args.post_steps} steps of batch {args.batch}, RAdam lr "
        f"{args.lr} linear decay, EMA {args.ema}, q curriculum 2 -> {2 ** (args.doublings + 1)}, evaluated every "
        f"{args.eval_every} steps. CMT route: generating DPM-Solver++(3) 16-step "
        f"trajectories for {summary['trajectories']:,} samples (256 of them held out), then "
        f"mid-training (8 trajectories x all points per step, lr {args.lr} linear decay over {args.mid_steps} steps, "
        f"EMA {args.ema}) evaluated every {args.mid_eval_every} steps. Training seeds 0-{args.seeds - 1}; the "
        "teacher and the store are shared.",
        f"Compute in student forward-pass equivalents: ECT step {c['ect']}, mid-training step {c['mid']}, "
        f"generation {c['generation']:,} (once). Measured: {summary['seconds_per_step']['ect'] * 1e3:.0f} ms per ECT "
        f"step, {summary['seconds_per_step']['mid'] * 1e3:.0f} ms per mid-training step, "
        f"{summary['generation_seconds']:.0f} s for the generation (one thread, shared cores; the wall-time ratio "
        "uses these).",
        "",
        "| target (x teacher) | target MSE | diffusion: ECT steps per seed | CMT: mid-training steps per seed | "
        "compute CMT / diffusion (forward equivalents, incl. generation) | wall-time ratio |",
        "|---:|---:|---|---|---:|---:|",
    ]
    for r in summary["rows"]:
        ratio = fmt(r["fe_ratio"]) if "fe_ratio" in r else "-"
        wall = fmt(r["seconds_ratio"]) if "seconds_ratio" in r else "-"
        lines.append(f"| {r['ratio']:g}x | {r['target']:.4g} | {per_seed(r['diffusion_steps'], args.post_steps)} | "
                     f"{per_seed(r['mid_steps'], args.mid_steps)} | {ratio} | {wall} |")
    ends = {n: [c[max(c)] for c in runs[n].values()] for n in runs}
    lines += ["", "Final 1-step flow-map MSE (mean ± std over seeds): " + "; ".join(
        f"{n} {fmt(v)}" for n, v in ends.items()) + ". Mid-trained student at the start of its ECT: "
        + fmt([c[0] for c in runs["CMT mid + ECT"].values()]) + ".", "",
        f"![steps to target](images/{image_name(args)})", ""]
    stages = [teacher_run, store] + [root / f"{p}-seed{s}" for s in range(args.seeds)
                                     for p in ("ect-diffusion", "mid", "ect-cmt")]
    lines += provenance(stages)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
