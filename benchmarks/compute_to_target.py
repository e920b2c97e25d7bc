"""Compute to a few-step quality target on digits: CMT against ECT from the diffusion weights and from random
weights (issue 31, item 1), the paper's claim measured on the product's own case.

Routes, each per training seed:
- cmt        generate the default store (configs/digits.toml [generate], once for all seeds), mid-train as
             [mid_train], then ECT as [post_train];
- diffusion  ECT from the built-in teacher's weights;
- random     ECT from the teacher's architecture, freshly initialised.
Every ECT run takes one recipe (--recipe): `default` is configs/digits.toml's [post_train] (sony/cmt's ECT after
CMT at a tenth of its lr), `ect` is vanilla ECT's (locuslab/ect: lr 1e-4 constant, q from 2 doubling 7 times over
the run); the recipe is the only thing a route's ECT changes. The diffusion and random routes run until --factor
times the cmt route's whole compute.

Compute is counted in forward-pass equivalents of the (teacher-sized) network, a backward pass as two forwards:
generation = trajectories x solver NFE (the held-out 256 included), a mid-training step = trajectories x points x 3,
an ECT step = batch x 4 (3 + the target's no-grad forward). Wall seconds per stage are recorded beside it.

Quality: digits FD of the EMA student at 1 and 2 steps, 5000 samples on each of the *report* evaluation seeds
(101, 102, 103; docs/evaluation.md: settings are chosen on seeds 1-3, never these), at the steps listed by
--mid-evals, --ect-evals and --long-evals. Targets, as multiples of the teacher's dpm3 x 16 FD on the same seeds and samples: 2-step
1.5x and 1.2x, 1-step 3x and 2x. A route reaches a target at its first evaluation whose mean FD over the seeds is at
or below it; compute to target = the route's compute at that evaluation.

    OMP_NUM_THREADS=1 python benchmarks/compute_to_target.py --out runs/c2t --routes cmt,diffusion --seeds 0
    ... --routes diffusion,random --recipe ect        # vanilla ECT's recipe for the long routes
    ... --report                                      # tables, curves and docs/results.md's section from what exists
    ... --smoke --out /tmp/c2t --doc /tmp/c2t.md      # a tiny run of every stage (sizes cut 10x and more)
Stages whose outputs exist are reused: an interrupted run continues where it stopped (a stage restarts whole).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import torch

from init_comparison import done, fresh, provenance

from cmt_pipeline.config import EvaluateConfig, GenerateConfig, MidTrainConfig, PostTrainConfig, load_config
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.evaluation.run import evaluate, measure
from cmt_pipeline.generation import generate
from cmt_pipeline.plotting import save_curves
from cmt_pipeline.stores import open_store
from cmt_pipeline.training.loop import EvalLog, due
from cmt_pipeline.training.midtrain import mid_train
from cmt_pipeline.training.posttrain import FewStepEval, post_train
from cmt_pipeline.files import atomic_write_json

CONFIG = "configs/digits.toml"
REPORT_SEEDS = (101, 102, 103)
QUIET = dict(device="cpu", tensorboard=False, sample_every=0, log_every=50)
TARGETS = (("2step", 1.5), ("2step", 1.2), ("1step", 3.0), ("1step", 2.0))
SIZES = {}  # --smoke: per-table overrides of configs/digits.toml
RECIPES = {"default": {},
           "ect": {"lr": 1e-4, "lr_schedule": "constant", "warmup_steps": 0, "q": 2.0, "doublings": 7}}


def cfg_of(cls, table: str, **kw):
    return load_config(cls, CONFIG, table, **{**SIZES.get(table, {}), **kw})


class SeedsFD:
    """measure(model): the EMA student's digits FD at 1 and 2 steps, mean and per-seed over the report seeds."""

    def __init__(self, samples: int, seeds):
        self.seeds = list(seeds)
        self.one = FewStepEval(PostTrainConfig(eval_samples=samples, data="digits"), (1, 8, 8), "cpu")

    def __call__(self, model) -> dict:
        out, was_training, t0 = {}, model.training, time.perf_counter()
        for steps in (1, 2):
            sampler = self.one.sampler(model.eval(), steps)
            fds = [measure(self.one.cfg, sampler, None, None, None, "cpu", s, False)["metrics"]["digits_fd"]
                   for s in self.seeds]
            out[f"{steps}step"] = statistics.mean(fds)
            out[f"{steps}step_seeds"] = fds
        model.train(was_training)
        return {**out, "eval_seconds": time.perf_counter() - t0}


class AtSteps(EvalLog):
    """EvalLog at a list of steps (dense early, sparse late) and the last, instead of every N (the step-0 row is
    not measured: a stage's start is the previous stage's end, or the teacher used as a 1/2-step map)."""

    def __init__(self, measure, path: Path, steps):
        super().__init__(measure, path, 0)
        self.steps = set(steps)

    def __call__(self, s):
        if s.step in self.steps or due(s, 0):
            self.measure(s.ema, s.step)


def rows(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def post_cfg(args, init: str, arch: str, steps: int, seed: int, out: Path) -> PostTrainConfig:
    recipe = dict(RECIPES[args.recipe])
    doublings = recipe.pop("doublings", None)
    if doublings is not None:
        recipe["q_double_every"] = math.ceil(steps / (doublings + 1))
    return cfg_of(PostTrainConfig, "post_train", init=init, arch=arch, data="digits", steps=steps,
                       seed=seed, eval_every=0, eval_samples=500, checkpoint_every=steps, out=str(out),
                       **recipe, **QUIET)


def ran_with(root: Path, pattern: str, cls, table: str) -> dict:
    """The settings the CMT route's runs matching `pattern` were made with (their config.json), else those it will
    be made with (configs/digits.toml): the costs follow the runs, not a default changed since."""
    made = sorted(root.glob(f"{pattern}/config.json"))
    if made:
        return json.loads(made[0].read_text())["config"]
    return dataclasses.asdict(cfg_of(cls, table))


def costs(store: Path) -> dict:
    plan = open_store(store).plan
    mid = ran_with(store.parent, "cmt-mid-seed*", MidTrainConfig, "mid_train")
    post = ran_with(store.parent, "cmt-ect-*-seed*", PostTrainConfig, "post_train")
    return {"generation": plan["num_samples"] * plan["nfe_per_sample"],
            "mid_step": mid["batch_size"] * mid["points_per_traj"] * 3, "mid_steps": mid["steps"],
            "ect_step": post["batch_size"] * 4, "ect_steps": post["steps"]}


def timed(fn, run: Path) -> None:
    """Run a stage once; its wall seconds, the report-seed evaluations inside it excluded, go to run.json."""
    record = run.parent / f"{run.name}.json"
    if not record.exists():
        t0 = time.perf_counter()
        fn()
        evals = sum(r.get("eval_seconds", 0) for r in rows(run / "fd.jsonl").values())
        atomic_write_json(record, {"seconds": time.perf_counter() - t0 - evals, "eval_seconds": evals})


def wall(run: Path) -> float | None:
    record = run.parent / f"{run.name}.json"
    return json.loads(record.read_text())["seconds"] if record.exists() else None


def ensure_store(root: Path) -> Path:
    store = root / "store"
    timed(lambda: generate(cfg_of(GenerateConfig, "generate", out=str(fresh(store)), device="cpu"),
                           progress=False), store)
    return store


def teacher_fd(args, root: Path) -> dict:
    """The teacher's dpm3 x 16 (the targets' unit) and Heun x 18 Karras (its best sampler) on the report seeds."""
    out = {}
    for name, kw in {"dpm3x16": dict(solver="dpm3", grid="logsnr", steps=16),
                     "heunx18": dict(solver="heun", grid="karras", steps=18)}.items():
        path = root / f"teacher-{name}" / "evaluation.json"
        if not path.exists():
            evaluate(EvaluateConfig(teacher="builtin", num_samples=args.eval_samples, seed=REPORT_SEEDS[0],
                                    seeds=list(REPORT_SEEDS), batch_size=500, device="cpu",
                                    out=str(path.parent), **kw), progress=False)
        out[name] = json.loads(path.read_text())
    return out


def run_cmt(args, root: Path, seed: int, measure) -> None:
    store = ensure_store(root)
    mid, post = root / f"cmt-mid-seed{seed}", root / f"cmt-ect-{args.recipe}-seed{seed}"
    c = costs(store)
    if not done(mid, "model.ckpt"):
        cfg = cfg_of(MidTrainConfig, "mid_train", data=str(store), seed=seed, out=str(fresh(mid)),
                          eval_every=c["mid_steps"], checkpoint_every=c["mid_steps"], **QUIET)
        timed(lambda: mid_train(cfg, progress=False,
                                callbacks=[AtSteps(measure, mid / "fd.jsonl", args.mid_evals)]), mid)
    if not done(post, "model.ckpt"):
        cfg = post_cfg(args, str(mid / "model.ckpt"), "", c["ect_steps"], seed, fresh(post))
        timed(lambda: post_train(cfg, progress=False,
                                 callbacks=[AtSteps(measure, post / "fd.jsonl", args.ect_evals)]), post)


def cmt_compute(c: dict) -> float:
    return c["generation"] + c["mid_steps"] * c["mid_step"] + c["ect_steps"] * c["ect_step"]


def long_steps(args, c: dict) -> int:
    return math.ceil(args.factor * cmt_compute(c) / c["ect_step"])


def run_long(args, root: Path, route: str, seed: int, measure, c: dict) -> None:
    run = root / f"{route}-ect-{args.recipe}-seed{seed}"
    steps = long_steps(args, c)
    if not done(run, "model.ckpt"):
        init, arch = ("builtin", "") if route == "diffusion" else ("random", "builtin")
        evals = sorted({s for s in args.long_evals if s < steps} | {steps})
        cfg = post_cfg(args, init, arch, steps, seed, fresh(run))
        timed(lambda: post_train(cfg, progress=False, callbacks=[AtSteps(measure, run / "fd.jsonl", evals)]),
              run)


def curve(root: Path, route: str, recipe: str, seed: int, c: dict) -> list[tuple[float, dict]]:
    """[(compute, fd row)] along a route, in forward-pass equivalents."""
    if route == "cmt":
        if not rows(root / f"cmt-ect-{recipe}-seed{seed}" / "fd.jsonl"):
            return []
        start = c["generation"]
        out = [(start + s * c["mid_step"], r) for s, r in sorted(rows(root / f"cmt-mid-seed{seed}" / "fd.jsonl").items())]
        start += c["mid_steps"] * c["mid_step"]
        out += [(start + s * c["ect_step"], r)
                for s, r in sorted(rows(root / f"cmt-ect-{recipe}-seed{seed}" / "fd.jsonl").items())]
        return out
    return [(s * c["ect_step"], r) for s, r in sorted(rows(root / f"{route}-ect-{recipe}-seed{seed}" / "fd.jsonl").items())]


def wall_at(root: Path, route: str, recipe: str, seed: int, c: dict, x: float) -> float | None:
    """Wall seconds (evaluations excluded) a route took to reach compute x: each stage's seconds spread evenly over
    its compute."""
    stages = ([(root / "store", c["generation"]), (root / f"cmt-mid-seed{seed}", c["mid_steps"] * c["mid_step"]),
               (root / f"cmt-ect-{recipe}-seed{seed}", c["ect_steps"] * c["ect_step"])] if route == "cmt" else
              [(root / f"{route}-ect-{recipe}-seed{seed}", None)])  # its length: the steps it ran
    total = 0.0
    for run, size in stages:
        seconds = wall(run)
        if seconds is None:
            return None
        size = size or long_steps_of(run) * c["ect_step"]
        if x <= size:
            return total + seconds * x / size
        total, x = total + seconds, x - size
    return total


def long_steps_of(run: Path) -> int:
    return json.loads((run / "metrics.json").read_text())["step"]


def first_hit(points, key: str, target: float):
    return next((x for x, r in points if r[key] <= target), None)


def fmt(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.mean(values):.3g}" + (f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else "")


def report(args, root: Path) -> None:
    c = costs(root / "store")
    teacher = teacher_fd(args, root)
    t_dpm = teacher["dpm3x16"]["metrics"]["digits_fd"]
    t_heun = teacher["heunx18"]["metrics"]["digits_fd"]
    routes = [("cmt", args.recipe), ("diffusion", args.recipe), ("random", args.recipe)]
    routes += [(r, x) for x in RECIPES for r in ("diffusion", "random", "cmt") if x != args.recipe]
    curves = {}
    for route, recipe in routes:
        per_seed = {s: curve(root, route, recipe, s, c) for s in args.seeds}
        per_seed = {s: p for s, p in per_seed.items() if p}
        if per_seed:
            curves[(route, recipe)] = per_seed
    total = cmt_compute(c)
    lines = [
        "## Compute to a few-step target on digits: CMT vs ECT from the diffusion and random weights",
        "",
        f"Teacher (built-in) on the report seeds {', '.join(map(str, REPORT_SEEDS))}, {args.eval_samples} samples "
        f"each: dpm3 x 16 FD **{t_dpm:.2f}** (the targets' unit), Heun x 18 Karras **{t_heun:.2f}**.",
        f"CMT route: {c['generation']:,} teacher forwards of generation, {c['mid_steps']} mid-training steps of "
        f"{c['mid_step']} and {c['ect_steps']} ECT steps of {c['ect_step']} forward equivalents: "
        f"{total / 1e6:.2f} M in all. The long routes run {long_steps(args, c)} ECT steps "
        f"({args.factor:g}x that compute).",
        "",
        "| route (ECT recipe) | seeds | " + " | ".join(f"{k[0]}-step FD <= {m:g}x ({m * t_dpm:.2f})" for k, m in
                                                 ((k, m) for k, m in TARGETS)) + " | last evaluated (M) | 1-step there | 2-step there |",
        "|---|---|" + "---:|" * (len(TARGETS) + 3),
    ]
    hits = {}
    for (route, recipe), per_seed in curves.items():
        cells = []
        for key, mult in TARGETS:
            h = {s: first_hit(p, key, mult * t_dpm) for s, p in per_seed.items()}
            hits[(route, recipe, key, mult)] = h
            reached = [x for x in h.values() if x is not None]
            cells.append(f"{fmt([x / 1e6 for x in reached])} M ({len(reached)}/{len(h)})" if reached
                         else f"not reached (0/{len(h)})")
        finals = [p[-1][1] for p in per_seed.values()]
        lines.append(f"| {route} ({recipe}) | {', '.join(map(str, per_seed))} | " + " | ".join(cells)
                     + f" | {fmt([p[-1][0] / 1e6 for p in per_seed.values()])} | {fmt([r['1step'] for r in finals])}"
                     f" | {fmt([r['2step'] for r in finals])} |")
    lines += ["", "Compute to target in millions of forward-pass equivalents, mean ± std over the seeds that reached "
              "it (how many of the seeds did in brackets); a route still running is read up to its last evaluation.",
              "", "Ratio CMT / diffusion at each target (CMT with its recipe against each diffusion run; seeds paired "
              "where both ran, else the diffusion route's seeds):", ""]
    for key, mult in TARGETS:
        cm = hits.get(("cmt", args.recipe, key, mult))
        for recipe in RECIPES:
            df = hits.get(("diffusion", recipe, key, mult))
            if cm is None or df is None:
                continue
            reached = {s: x for s, x in cm.items() if x is not None}
            pairs = [reached[s] / df[s] for s in df if s in reached and df[s] is not None]
            secs = [wall_at(root, "cmt", args.recipe, s, c, reached[s]) / wall_at(root, "diffusion", recipe, s, c, df[s])
                    for s in df if s in reached and df[s] is not None]
            label = f"- {key} FD at {mult:g}x the teacher, diffusion ({recipe}): "
            if pairs:
                lines.append(label + f"{fmt(pairs)} in forward equivalents, {fmt(secs)} in wall time")
            elif reached:
                last = min(curves[("diffusion", recipe)][s][-1][0] for s in df)
                lines.append(label + f"below {max(reached.values()) / last:.2f}: the diffusion route did not reach it "
                             f"in {last / 1e6:.2f} M ({last / cmt_compute(c):.1f}x the CMT route's whole compute)")
            else:
                lines.append(label + "CMT did not reach it")
    image = Path(args.images) / "compute-to-target-digits.png"
    panels = {}
    for key in ("1step", "2step"):
        panels[f"{key} digits FD"] = {
            f"{route} ({recipe})": band(per_seed, key) for (route, recipe), per_seed in curves.items()}
    save_curves(image, panels, xlabel="forward-pass equivalents", ylabel="digits FD (report seeds)")
    lines += ["", f"![compute to target](images/{image.name})", ""]
    stages = [root / "store"] + sorted(p for p in root.glob("*-seed*") if p.is_dir())
    lines += provenance(stages)
    write_section(args.doc, "compute-to-target:digits", "\n".join(lines))
    atomic_write_json(root / "summary.json", {
        "teacher": {"dpm3x16": t_dpm, "heunx18": t_heun}, "costs": c,
        "curves": {f"{r} ({x})": {str(s): [[cx, row] for cx, row in p] for s, p in ps.items()}
                   for (r, x), ps in curves.items()}})


def band(per_seed: dict, key: str):
    """x, mean, min, max over seeds at the compute points every seed has."""
    xs = sorted(set.intersection(*({x for x, _ in p} for p in per_seed.values())))
    vals = [[dict(p)[x][key] for p in per_seed.values()] for x in xs]
    return xs, [statistics.mean(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/compute-to-target")
    p.add_argument("--doc", default="docs/results.md")
    p.add_argument("--images", default="docs/images")
    p.add_argument("--routes", default="cmt,diffusion,random")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--mid-evals", type=lambda s: [int(x) for x in s.split(",")],
                   default=[100, 200, 350, 700, 1050])
    p.add_argument("--ect-evals", type=lambda s: [int(x) for x in s.split(",")], default=[100, 200, 300, 400, 500])
    p.add_argument("--long-evals", type=lambda s: [int(x) for x in s.split(",")],
                   default=[100, 250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000])
    p.add_argument("--report", action="store_true", help="only write the section from the runs that exist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="every stage at a tenth of its size or less (a check)")
    args = p.parse_args()
    if args.smoke:
        SIZES.update(generate={"num_samples": 512, "shard_size": 256}, mid_train={"steps": 20, "holdout": 64},
                     post_train={"steps": 10})
        args.mid_evals, args.ect_evals, args.long_evals = [10], [5], [10, 30]
    torch.set_num_threads(args.threads)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if not args.report:
        measure = SeedsFD(args.eval_samples, REPORT_SEEDS)
        routes = args.routes.split(",")
        for seed in args.seeds:
            if "cmt" in routes:
                run_cmt(args, root, seed, measure)
            c = costs(ensure_store(root))
            for route in ("diffusion", "random"):
                if route in routes:
                    t0 = time.perf_counter()
                    run_long(args, root, route, seed, measure, c)
                    print(f"{route} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    report(args, root)


if __name__ == "__main__":
    main()
