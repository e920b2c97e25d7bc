"""Does the initialisation matter for post-training? ECT post-training from three initialisations at the same
post-training budget (steps x batch), several seeds each:

    random     the student's architecture, fresh weights
    diffusion  the diffusion teacher's weights (vanilla ECT)
    CMT        the teacher's weights mid-trained on the teacher's own stored trajectories (cmt mid-train)

on the Gaussian mixture gmm:gmm8x8 (a small diffusion teacher pretrained here; quality = 1-step error to the exact
flow map and sliced W2 to the true mixture) and on digits (the built-in teacher; quality = digits FD), plus the
question only an offline store answers: mid-training on n stored digits trajectories (--sizes: 256, 1k and 4k by
default, what fits 2 shared CPU cores; --sizes 1024,4096,16384 on a bigger machine) at the same mid-training
budget, then the same post-training. Writes run folders under --out, OUT/<part>/summary.json, and
its own sections of docs/results.md (between `<!-- init-comparison:<part> -->` markers; the rest is untouched).

Protocol (`--protocol paper`, the default): random and diffusion inits get vanilla ECT's curriculum (q starts
at 2 and doubles --doublings times over the run), the CMT init keeps q fixed at the curriculum's final value
(what the reference does after CMT). On the mixture the CMT init is also post-trained with the curriculum, so
the effect of the schedule is visible separately. `--protocol same` gives every init the curriculum.

    OMP_NUM_THREADS=1 nice python benchmarks/init_comparison.py --out runs/init-comparison
    ... --parts gmm            # only the mixture;  --parts digits,size  (needs the built-in teacher)
Stages whose outputs exist are reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from cmt_pipeline.config import EvaluateConfig, GenerateConfig, MidTrainConfig, PostTrainConfig, PretrainConfig
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.evaluation.run import measure
from cmt_pipeline.generation import generate
from cmt_pipeline.pipeline import store_done
from cmt_pipeline.plotting import save_curves
from cmt_pipeline.sampling import TeacherSampler
from cmt_pipeline.stores import open_store
from cmt_pipeline.teachers import load_teacher
from cmt_pipeline.training.midtrain import mid_train
from cmt_pipeline.training.posttrain import EVAL_SEED, post_train
from cmt_pipeline.training.pretrain import pretrain
from cmt_pipeline.files import atomic_write_json

QUIET = dict(device="cpu", tensorboard=False, sample_every=0, log_every=25)
INITS = ("random", "diffusion", "CMT")
METRICS = {"gmm": ("1step_flow_map_mse", "1step_sliced_w2", "2step_sliced_w2"),
           "digits": ("1step_digits_fd", "2step_digits_fd")}
LABELS = {"1step_flow_map_mse": "1-step MSE to exact flow map", "1step_sliced_w2": "1-step sliced W2",
          "2step_sliced_w2": "2-step sliced W2", "1step_digits_fd": "1-step digits FD",
          "2step_digits_fd": "2-step digits FD"}


def done(run: Path, last_file: str) -> bool:
    """A stage is complete when the file it writes last exists."""
    return (run / last_file).exists()


def fresh(run: Path) -> Path:
    """An unfinished run folder is cleared: each stage is short, restarting it is simpler than resuming."""
    shutil.rmtree(run, ignore_errors=True)
    return run


def eval_rows(run: Path) -> dict[int, dict]:
    rows = {}
    for line in (run / "eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row
    return rows


def curriculum(args, steps: int) -> dict:
    """Vanilla ECT: q from 2, doubling `doublings` times over the run; ends at q = 2 ** (doublings + 1)."""
    return {"q": 2.0, "q_double_every": max(1, math.ceil(steps / (args.doublings + 1)))}


def fixed_q(args) -> dict:
    return {"q": 2.0 ** (args.doublings + 1), "q_double_every": 0}


def reference_recipe(steps: int) -> dict:
    """ECT after CMT as sony/cmt runs it: large fixed q, a small constant lr after a short warm-up (10% here)."""
    return {"q": 4096.0, "q_double_every": 0, "lr": 1e-4, "lr_schedule": "constant",
            "warmup_steps": max(1, steps // 10)}


def post_runs(args, part: str, root: Path, data: str, inits: dict, post: dict, seeds) -> dict:
    """ECT post-training for every (init, seed); returns {name: {seed: {step: eval row}}}."""
    out = {}
    for name, (init, arch, schedule) in inits.items():
        out[name] = {}
        for seed in seeds:
            run = root / f"post-{name}-seed{seed}"
            if not done(run, "metrics.json"):
                t0 = time.perf_counter()
                post_train(PostTrainConfig(init=init, arch=arch, objective="ect", data=data, seed=seed,
                                           out=str(fresh(run)), **{**post, **schedule}, **QUIET), progress=False)
                print(f"[{part}] {name} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
            out[name][seed] = eval_rows(run)
    return out


def summarise(runs: dict, metrics, target_metric: str, target_from: str, steps: int) -> dict:
    """Mean/std over seeds of each metric at every evaluated step; steps to reach the target (the `target_from`
    init's mean final value of `target_metric`) per seed."""
    table = {}
    for name, seeds in runs.items():
        evaluated = sorted(set.intersection(*(set(rows) for rows in seeds.values())))
        table[name] = {"steps": evaluated, **{m: {s: [seeds[k][s][m] for k in seeds] for s in evaluated}
                                              for m in metrics}}
    target = statistics.mean(table[target_from][target_metric][steps])
    for name, seeds in runs.items():
        reach = []
        for rows in seeds.values():
            hit = [s for s in sorted(rows) if rows[s][target_metric] <= target]
            reach.append(hit[0] if hit else None)
        table[name]["steps_to_target"] = reach
    return {"table": table, "target": {"metric": target_metric, "value": target, "from": target_from}}


def fmt(values, digits=3, std_digits=1) -> str:
    """Mean ± std over seeds (the benchmarks' one formatter); each value alone where there is one or one is not
    finite (a ratio to a route already there at step 0)."""
    if len(values) > 1 and all(math.isfinite(v) for v in values):
        return f"{statistics.mean(values):.{digits}g} ± {statistics.stdev(values):.{std_digits}g}"
    return " / ".join(f"{v:.{digits}g}" for v in values)


def reach_fmt(reach) -> str:
    hit = [r for r in reach if r is not None]
    if not hit:
        return f"not reached (0/{len(reach)})"
    return f"{statistics.mean(hit):.0f} ({len(hit)}/{len(reach)} seeds)"


def render_table(summary: dict, metrics) -> list[str]:
    """The first metric at steps 0, ~1/4, ~1/2 and all of the budget; the others at 0 and the full budget."""
    steps = next(iter(summary["table"].values()))["steps"]
    budgets = sorted({steps[0], steps[len(steps) // 4], steps[len(steps) // 2], steps[-1]})
    cols = [(metrics[0], b) for b in budgets] + [(m, b) for m in metrics[1:] for b in (steps[0], steps[-1])]
    target = summary["target"]
    lines = ["| init | " + " | ".join(f"{LABELS[m]} @ step {b}" for m, b in cols)
             + f" | steps to {LABELS[target['metric']]} <= {target['value']:.4g} |",
             "|---" * (len(cols) + 2) + "|"]
    for name, t in summary["table"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(t[m][b]) for m, b in cols)
                     + f" | {reach_fmt(t['steps_to_target'])} |")
    return lines


def reading(summary: dict, metric: str) -> str:
    """The comparison in words, computed from the table (lower is better for every metric here)."""
    ends = {}
    for name, t in summary["table"].items():
        ends[name] = (statistics.mean(t[metric][t["steps"][0]]), statistics.mean(t[metric][t["steps"][-1]]))
    order = sorted(ends, key=lambda n: ends[n][1])
    return (f"Reading ({LABELS[metric]}, lower is better): at the full budget "
            + " < ".join(f"{n} {ends[n][1]:.3g}" for n in order) + "; from the init to the full budget "
            + ", ".join(f"{n} {a:.3g} -> {b:.3g}" for n, (a, b) in ends.items()) + ".")


def plot_curves(summary: dict, metric: str, path: Path, title: str) -> None:
    """Each init's mean curve over seeds, shaded from the lowest to the highest seed, with the target line."""
    series = {}
    for name, t in summary["table"].items():
        per_step = [t[metric][s] for s in t["steps"]]
        series[name] = (t["steps"], [statistics.mean(v) for v in per_step], [min(v) for v in per_step],
                        [max(v) for v in per_step])
    save_curves(path, {title: series}, "post-training step (ECT)", LABELS[metric] + " (EMA)", summary["target"]["value"])


def stage_seconds(folder: Path) -> float:
    """A finished stage's wall time: from the first to the last file written in its folder (so a section
    rendered again from reused stages still reports what they cost)."""
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    return max(times) - min(times)


def provenance(stages: list[Path]) -> list[str]:
    cmd = " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "?"), "python"]
                   + [shlex.quote(a) for a in sys.argv])
    total = sum(stage_seconds(s) for s in stages)
    return [f"Command: `{cmd}`. Compute: {total / 60:.0f} min of wall time over this section's {len(stages)} "
            f"stages, one thread each, on 2 CPU cores shared with other jobs (load average "
            f"{os.getloadavg()[2]:.1f} over the 15 minutes before this section was written)."]


# ---- the Gaussian mixture --------------------------------------------------------------------------------

def gmm_cmt(args, root: Path, mid_steps: int | None = None) -> tuple[Path, Path]:
    """The mixture's diffusion teacher run and its CMT (mid-trained) run, made once under `root` and reused; a
    mid_steps other than --gmm-mid-steps gets its own mid-<steps> run beside the default one (same teacher, store)."""
    teacher_run = root / "teacher"
    if done(teacher_run, "teacher"):
        made = json.loads((teacher_run / "config.json").read_text())["config"].get("time_scale", 1000.0)
        if made != args.gmm_time_scale:
            raise SystemExit(f"{teacher_run} was pretrained with time scale {made:g}, not --gmm-time-scale "
                             f"{args.gmm_time_scale:g}: pass --gmm-time-scale {made:g} or another --out")
    else:
        pretrain(PretrainConfig(data="gmm:gmm8x8", gmm_samples=8192, channels=args.gmm_channels, layers_per_block=1,
                                steps=args.gmm_teacher_steps, batch_size=128, lr=2e-3, ema_decay=0.99,
                                time_scale=args.gmm_time_scale,
                                out=str(fresh(teacher_run)), **QUIET), progress=False)
    n_traj = args.gmm_trajectories + 256
    store = root / "trajectories"
    if not store_done(store):
        generate(GenerateConfig(teacher=str(teacher_run / "teacher"), num_samples=n_traj, out=str(fresh(store)),
                                device="cpu", batch_size=512, shard_size=1024), progress=False)
    mid_steps = mid_steps or args.gmm_mid_steps
    mid = root / ("mid" if mid_steps == args.gmm_mid_steps else f"mid-{mid_steps}")
    if not done(mid, "model.ckpt"):
        mid_train(MidTrainConfig(data=str(store), init="teacher", flavour="cm", holdout=256, steps=mid_steps,
                                 batch_size=8, lr=args.gmm_lr, ema_decay=args.ema, eval_every=mid_steps,
                                 out=str(fresh(mid)), **QUIET), progress=False)
    return teacher_run, mid


def gmm_part(args, out: Path, doc: Path) -> None:
    root = out / "gmm"
    teacher_run, mid = gmm_cmt(args, root)
    steps = args.gmm_post_steps
    post = dict(steps=steps, batch_size=args.gmm_batch, lr=args.gmm_lr, ema_decay=args.ema, gmm_samples=8192,
                eval_every=max(1, steps // args.evals), eval_samples=args.eval_samples, checkpoint_every=steps)
    teacher_ckpt = str(teacher_run / "model.ckpt")
    cmt_schedule = curriculum(args, steps) if args.protocol == "same" else fixed_q(args)
    inits = {"random": ("random", teacher_ckpt, curriculum(args, steps)),
             "diffusion": (teacher_ckpt, "", curriculum(args, steps)),
             "CMT": (str(mid / "model.ckpt"), "", cmt_schedule)}
    if args.protocol == "paper":
        inits["CMT, q curriculum"] = (str(mid / "model.ckpt"), "", curriculum(args, steps))
        inits["CMT, reference recipe"] = (str(mid / "model.ckpt"), "", reference_recipe(steps))
    runs = post_runs(args, "gmm", root, "gmm:gmm8x8", inits, post, range(args.seeds))
    summary = summarise(runs, METRICS["gmm"], "1step_flow_map_mse", "diffusion", steps)

    # references: the teacher's own 16-step solve and the sampling floor, on the same evaluation noise
    teacher = load_teacher(str(teacher_run / "teacher"))
    ref = teacher_reference(args, teacher, load_teacher("gmm:gmm8x8"))
    summary["teacher"] = {k: ref["metrics"][k] for k in ("flow_map_mse", "sliced_w2", "sliced_w2_floor")}
    mid_eval = json.loads((mid / "eval.jsonl").read_text().splitlines()[-1])
    summary["mid"] = {"steps": args.gmm_mid_steps, "points_per_step": 8 * 16, **mid_eval}
    summary["post"] = {**post, "protocol": args.protocol, "curriculum": curriculum(args, steps), "fixed": fixed_q(args)}
    atomic_write_json(root / "summary.json", summary)
    plot_curves(summary, "1step_flow_map_mse", Path(args.images) / "init-comparison-gmm.png",
                f"ECT on gmm:gmm8x8 from three inits ({args.seeds} seeds)")

    t = summary["teacher"]
    lines = [
        "## Post-training from three initialisations: Gaussian mixture (gmm:gmm8x8)",
        "",
        f"A small diffusion teacher (UNet {args.gmm_channels}, timestep scale {args.gmm_time_scale:g}, "
        f"{args.gmm_teacher_steps} EDM steps on 8,192 exact mixture samples) is the diffusion init; CMT = that "
        f"teacher mid-trained for {args.gmm_mid_steps} steps (8 trajectories x 16 points) on "
        f"{args.gmm_trajectories} of its own DPM-Solver++(3) 16-step trajectories (held-out 1-step MSE "
        f"to its solver samples {summary['mid']['teacher_mse']:.4g}); random = the same UNet re-initialised. "
        f"Then ECT on exact mixture samples for {steps} steps of batch {args.gmm_batch}, lr {args.gmm_lr} (RAdam, "
        f"linear decay), EMA {args.ema}, seeds {list(range(args.seeds))}. Protocol `{args.protocol}`: "
        + ("random and diffusion with the q curriculum "
           f"(q = 2 doubling every {curriculum(args, steps)['q_double_every']} steps), CMT with fixed "
           f"q = {fixed_q(args)['q']:g}; `CMT, q curriculum` is the CMT init with the others' schedule."
           f" `CMT, reference recipe` is the CMT init post-trained as the reference does after CMT: q = "
           f"{reference_recipe(steps)['q']:g} fixed, lr {reference_recipe(steps)['lr']:g} constant after "
           f"{reference_recipe(steps)['warmup_steps']} warm-up steps."
           if args.protocol == "paper" else "every init with the q curriculum."),
        f"Metrics on {args.eval_samples} fixed noise samples (EMA weights), mean ± std over seeds; the teacher's "
        f"own 16-step solve on the same noise: flow-map MSE {t['flow_map_mse']:.4g}, sliced W2 {t['sliced_w2']:.4g} "
        f"(floor between two exact sample sets: {t['sliced_w2_floor']:.4g}).",
        "",
        *render_table(summary, METRICS["gmm"]),
        "",
        reading(summary, "1step_flow_map_mse"),
        "",
        f"Target: the diffusion init's mean final 1-step flow-map MSE; steps = the first evaluation (every "
        f"{post['eval_every']} steps) at or below it, averaged over the seeds that reach it.",
        "",
        "![1-step error vs post-training step](images/init-comparison-gmm.png)",
        "",
        *provenance([teacher_run, root / "trajectories", mid, *(root / f"post-{n}-seed{k}" for n in inits
                                                 for k in range(args.seeds))]),
    ]
    write_section(doc, "init-comparison:gmm", "\n".join(lines))


# ---- digits ----------------------------------------------------------------------------------------------

def digits_store(args, root: Path) -> Path:
    """One store of the largest size + 256 held out; smaller training sets are its first n trajectories."""
    store = root / "trajectories"
    if not store_done(store):
        generate(GenerateConfig(teacher="builtin", num_samples=max(args.sizes) + 256, out=str(fresh(store)),
                                device="cpu", batch_size=256, shard_size=1024), progress=True)
    return store


def digits_mid(args, root: Path, store: Path, n: int) -> Path:
    mid = root / f"mid-{n}"
    total = open_store(store).plan["num_samples"]
    if not done(mid, "model.ckpt"):
        mid_train(MidTrainConfig(data=str(store), init="teacher", flavour="cm", holdout=total - n,
                                 steps=args.digits_mid_steps, batch_size=8, points_per_traj=args.points_per_traj,
                                 lr=args.digits_lr, ema_decay=args.ema, eval_every=args.digits_mid_steps,
                                 eval_samples=256, out=str(fresh(mid)), **QUIET), progress=False)
    return mid


def digits_post(args) -> dict:
    steps = args.digits_post_steps
    return dict(steps=steps, batch_size=args.digits_batch, lr=args.digits_lr, ema_decay=args.ema,
                eval_every=max(1, steps // args.digits_evals), eval_samples=args.eval_samples, checkpoint_every=steps)


def teacher_reference(args, teacher, gmm=None) -> dict:
    """The teacher's 16-step DPM-Solver++(3) solve, measured as the students are (evaluation's `measure` on
    post-training's evaluation noise): {metrics, x, images}."""
    cfg = EvaluateConfig(num_samples=args.eval_samples, seed=EVAL_SEED)
    return measure(cfg, TeacherSampler(teacher, "dpm3", 16), None, gmm, None, "cpu", EVAL_SEED, False)


def digits_part(args, out: Path, doc: Path) -> None:
    from cmt_pipeline.plotting import save_image_grid

    root = out / "digits"
    store = digits_store(args, root)
    mid = digits_mid(args, root, store, max(args.sizes))
    steps = args.digits_post_steps
    cmt_schedule = curriculum(args, steps) if args.protocol == "same" else fixed_q(args)
    inits = {"random": ("random", "builtin", curriculum(args, steps)),
             "diffusion": ("builtin", "", curriculum(args, steps)),
             "CMT": (str(mid / "model.ckpt"), "", cmt_schedule)}
    runs = post_runs(args, "digits", root, "digits", inits, digits_post(args), range(args.seeds))
    summary = summarise(runs, METRICS["digits"], "1step_digits_fd", "diffusion", steps)
    ref = teacher_reference(args, load_teacher("builtin"))
    summary["teacher"] = {k: ref["metrics"][k] for k in ("digits_fd", "digits_kid", "digits_fd_floor")}
    summary["mid"] = {"steps": args.digits_mid_steps, "trajectories": max(args.sizes),
                      "points_per_step": 8 * args.points_per_traj,
                      **json.loads((mid / "eval.jsonl").read_text().splitlines()[-1])}
    atomic_write_json(root / "summary.json", summary)
    images = Path(args.images)
    plot_curves(summary, "1step_digits_fd", images / "init-comparison-digits.png",
                f"ECT on digits from three inits ({args.seeds} seeds)")
    best = root / "post-CMT-seed0"
    for k in (1, 2):
        shutil.copyfile(best / f"samples-{k}step.png", images / f"post-digits-cmt-{k}step.png")
    save_image_grid(ref["images"][:64], images / "digits-teacher-16step.png")

    t = summary["teacher"]
    lines = [
        "## Post-training from three initialisations: digits",
        "",
        f"The built-in digits teacher (2.0 M parameters) is the diffusion init; CMT = the teacher mid-trained for "
        f"{args.digits_mid_steps} steps (8 trajectories x {args.points_per_traj} points) on {max(args.sizes)} of "
        f"its own DPM-Solver++(3) 16-step trajectories (held-out 1-step MSE to its solver samples "
        f"{summary['mid']['teacher_mse']:.4g}); random = the same UNet re-initialised. Then ECT on the 1,797 real "
        f"digits for {steps} steps of batch {args.digits_batch}, lr {args.digits_lr} (RAdam, linear decay), EMA "
        f"{args.ema}, seeds {list(range(args.seeds))}; protocol `{args.protocol}` (see the mixture section).",
        f"Digits FD on {args.eval_samples} samples (EMA weights), mean ± std over seeds. The teacher's 16-step "
        f"DPM-Solver++(3) on the same noise: **{t['digits_fd']:.3f}**; floor (two halves of the real digits): "
        f"{t['digits_fd_floor']:.3f}.",
        "",
        *render_table(summary, METRICS["digits"]),
        "",
        reading(summary, "1step_digits_fd") + " " + reading(summary, "2step_digits_fd"),
        "",
        f"Target: the diffusion init's mean final 1-step FD; steps = the first evaluation (every "
        f"{digits_post(args)['eval_every']} steps) at or below it.",
        "",
        "![1-step FD vs post-training step](images/init-comparison-digits.png)",
        "",
        "| teacher, 16 steps | CMT init + ECT, 1 step | CMT init + ECT, 2 steps |",
        "|---|---|---|",
        "| ![](images/digits-teacher-16step.png) | ![](images/post-digits-cmt-1step.png) | "
        "![](images/post-digits-cmt-2step.png) |",
        "",
        *provenance([store, mid, *(root / f"post-{n}-seed{k}" for n in inits for k in range(args.seeds))]),
    ]
    write_section(doc, "init-comparison:digits", "\n".join(lines))


def size_part(args, out: Path, doc: Path) -> None:
    root = out / "digits"
    store = digits_store(args, root)
    steps = args.digits_post_steps
    rows = []
    for n in args.sizes:
        mid = digits_mid(args, root, store, n)
        mid_eval = json.loads((mid / "eval.jsonl").read_text().splitlines()[-1])
        name = "CMT" if n == max(args.sizes) else f"CMT-{n}"  # the largest set's runs are the digits part's
        inits = {name: (str(mid / "model.ckpt"), "", fixed_q(args) if args.protocol == "paper"
                        else curriculum(args, steps))}
        runs = post_runs(args, "size", root, "digits", inits, digits_post(args), range(args.size_seeds))[name]
        final = [r[steps] for r in runs.values()]
        start = [r[0] for r in runs.values()]
        rows.append({"n": n, "mid_heldout_mse": mid_eval["teacher_mse"],
                     **{f"init_{m}": [r[m] for r in start] for m in METRICS["digits"]},
                     **{f"final_{m}": [r[m] for r in final] for m in METRICS["digits"]}})
    atomic_write_json(root / "size-summary.json", rows)
    lines = [
        f"## Mid-training data: {', '.join(map(str, args.sizes))} stored digits trajectories",
        "",
        f"Mid-training at the same budget ({args.digits_mid_steps} steps of 8 trajectories x {args.points_per_traj} "
        f"points = {args.digits_mid_steps * 8} trajectory draws) on the first n trajectories of one stored "
        f"DPM-Solver++(3) dataset of the built-in teacher (the same 256 held out), then the same ECT post-training "
        f"as above ({steps} steps, fixed q = {fixed_q(args)['q']:g}; seeds {list(range(args.size_seeds))}). "
        f"Epochs over the stored set: " + ", ".join(f"{n}: {args.digits_mid_steps * 8 / n:.2g}" for n in args.sizes)
        + ".",
        "",
        "| stored trajectories | held-out 1-step MSE after mid-training | 1-step FD after mid-training | "
        "2-step FD after mid-training | 1-step FD after post-training | 2-step FD after post-training |",
        "|---|---|---|---|---|---|",
        *[f"| {r['n']} | {r['mid_heldout_mse']:.4g} | {fmt(r['init_1step_digits_fd'])} | "
          f"{fmt(r['init_2step_digits_fd'])} | {fmt(r['final_1step_digits_fd'])} | {fmt(r['final_2step_digits_fd'])} |"
          for r in rows],
        "",
        *provenance([store, *(root / f"mid-{n}" for n in args.sizes),
                     *(root / f"post-CMT-{n}-seed{k}" for n in args.sizes if n != max(args.sizes)
                       for k in range(args.size_seeds))]),
    ]
    write_section(doc, "init-comparison:size", "\n".join(lines))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/init-comparison")
    p.add_argument("--doc", default="docs/results.md")
    p.add_argument("--images", default="docs/images")
    p.add_argument("--parts", default="gmm,digits,size", help="comma-separated: gmm, digits, size")
    p.add_argument("--protocol", choices=["paper", "same"], default="paper")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--size-seeds", type=int, default=3)
    p.add_argument("--doublings", type=int, default=7, help="q curriculum: 2 -> 2^(doublings+1) over the run")
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--evals", type=int, default=8, help="evaluations per mixture post-training run (plus step 0)")
    p.add_argument("--digits-evals", type=int, default=3, help="the same for digits (each costs 3,000 samples)")
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--gmm-channels", type=lambda s: [int(c) for c in s.split(",")], default=[16, 32])
    p.add_argument("--gmm-teacher-steps", type=int, default=1500)
    p.add_argument("--gmm-time-scale", type=float, default=1.0,
                   help="the mixture teacher's timestep scale (cmt pretrain --time-scale; 1000 made the sections of "
                        "docs/results.md written before 2026-12-01)")
    p.add_argument("--gmm-trajectories", type=int, default=4096)
    p.add_argument("--gmm-mid-steps", type=int, default=400)
    p.add_argument("--gmm-post-steps", type=int, default=400)
    p.add_argument("--gmm-batch", type=int, default=64)
    p.add_argument("--gmm-lr", type=float, default=1e-3)
    p.add_argument("--sizes", type=lambda s: [int(c) for c in s.split(",")], default=[256, 1024, 4096])
    p.add_argument("--digits-mid-steps", type=int, default=300)
    p.add_argument("--points-per-traj", type=int, default=4)
    p.add_argument("--digits-post-steps", type=int, default=150)
    p.add_argument("--digits-batch", type=int, default=32)
    p.add_argument("--digits-lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine's cores are shared)")
    return p


def main():
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    out, doc = Path(args.out), Path(args.doc)
    parts = {"gmm": gmm_part, "digits": digits_part, "size": size_part}
    for name in args.parts.split(","):
        parts[name](args, out, doc)


if __name__ == "__main__":
    main()
