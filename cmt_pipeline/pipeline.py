"""`cmt pipeline CONFIG`: generate -> mid-train -> post-train -> evaluate from one TOML file, into one run folder.

    RUN/trajectories/   the trajectory store            ([generate] table)
    RUN/mid/            mid-training run, model.ckpt    ([mid_train] table; data = RUN/trajectories)
    RUN/post/           post-training run, model.ckpt   ([post_train] table; init = RUN/mid/model.ckpt), and with
                        keep_best best-1step.ckpt and best-2step.ckpt, which the post rows then score
    RUN/eval/<name>/    evaluation.json + samples.png   ([evaluate] table) for the teacher and the students
    RUN/losses.png      training loss curves;  RUN/report.md  the metrics per stage;  RUN/pipeline.json
    RUN/stage_times.json  each stage's wall time, recorded when it finishes, so a rerun's report keeps it

Each stage is skipped when its output is already complete and valid (a finished store, a model.ckpt that
reached its step count, an evaluation.json), resumed when it was interrupted (generation fills in missing
shards, training resumes from the latest checkpoint), and otherwise run. The paths that wire one stage to the
next are set here, so the TOML tables hold only each stage's own settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from .config import EvaluateConfig, GenerateConfig, MidTrainConfig, PostTrainConfig, load_config, read_toml, to_dict
from .evaluation.metrics import HEADLINE
from .evaluation.run import evaluate
from .generation import generate
from .models.io import load_model
from .plotting import save_curves
from .stores import open_store
from .training.midtrain import mid_train
from .training.posttrain import EVAL_SEED, kept_checkpoint, post_train
from .errors import CMTError
from .files import atomic_write_bytes, atomic_write_json

SECTIONS = {"pipeline", "generate", "mid_train", "post_train", "evaluate"}


def load_pipeline(path, out: str | None = None) -> dict:
    """The stage configs of a pipeline file, with the run folder wiring applied."""
    data = read_toml(path)
    unknown = sorted(set(data) - SECTIONS)
    if unknown:
        raise CMTError(f"{path}: unknown table(s) {unknown}; a pipeline file has {sorted(SECTIONS)}")
    pipe = data.get("pipeline", {})
    run = Path(out or pipe.get("out", "runs/pipeline"))
    traj, mid, post = run / "trajectories", run / "mid", run / "post"
    gen = load_config(GenerateConfig, path, "generate", out=str(traj))
    midc = load_config(MidTrainConfig, path, "mid_train", out=str(mid), data=str(traj))
    postc = load_config(PostTrainConfig, path, "post_train", out=str(post), init=str(mid / "model.ckpt"))
    evalc = load_config(EvaluateConfig, path, "evaluate", teacher=gen.teacher, store=str(traj),
                        store_samples=midc.holdout, gmm=gen.teacher if gen.teacher.startswith("gmm:") else None,
                        guidance_scale=gen.guidance_scale, null_label=gen.null_label, vae=gen.vae or None)
    return {"run": run, "generate": gen, "mid_train": midc, "post_train": postc, "evaluate": evalc}


def store_done(path: Path) -> bool:
    try:
        open_store(path)  # complete, and every file the size its marker recorded
        return True
    except CMTError:
        return False


def training_done(run_dir: Path, steps: int) -> bool:
    ckpt = run_dir / "model.ckpt"
    if not ckpt.exists():
        return False
    try:
        return load_model(ckpt)["step"] >= steps
    except CMTError:
        return False


def resume_arg(run_dir: Path) -> str | None:
    return "latest" if (run_dir / "checkpoints" / "latest").exists() else None


def evaluations(cfgs: dict) -> dict[str, EvaluateConfig]:
    """What the report compares, all on the same seeded noise: the teacher's own solve (the trajectory solver;
    with [evaluate] teacher_from_store the store's first num_samples samples, which generation solved from its seed) and
    its best sampler (the report's reference), on [evaluate] teacher_seeds when set; the teacher as a 1- and
    2-step map (what mid-training starts from) when teacher_maps; the mid- and post-trained students at 1 and 2
    steps (with [post_train] keep_best, the post rows score best-1step.ckpt and best-2step.ckpt). Only the teacher
    row reads the store."""
    e, run, gen = cfgs["evaluate"], cfgs["run"], cfgs["generate"]
    teacher = replace(e, seeds=e.teacher_seeds or e.seeds, from_store=False)
    rows = {"teacher": replace(teacher, solver=gen.solver, grid=gen.grid, steps=e.steps or gen.steps,
                               out=str(run / "eval" / "teacher"),
                               **({"from_store": True, "seeds": [gen.seed]} if e.teacher_from_store else {})),
            "teacher-best": replace(teacher, solver=e.teacher_best_solver, grid=e.teacher_best_grid,
                                    steps=e.teacher_best_steps, out=str(run / "eval" / "teacher-best"))}
    post = cfgs["post_train"]
    students = (("teacher", gen.teacher),) * e.teacher_maps + (("mid", str(run / "mid" / "model.ckpt")),
                                                               ("post", str(run / "post" / "model.ckpt")))
    for name, student in students:
        for steps in (1, 2):
            if name == "post" and post.keep_best:  # each step count's held-out best (posttrain.KeepBest)
                student = str(kept_checkpoint(post.out, steps))
            rows[f"{name}-{steps}step"] = replace(e, student=student, steps=steps, from_store=False,
                                                  sigma_mid=post.sigma_mid,
                                                  out=str(run / "eval" / f"{name}-{steps}step"))
    return rows


def run_pipeline(config_path, out: str | None = None, progress: bool = True, echo=print) -> dict:
    cfgs = load_pipeline(config_path, out)
    run = cfgs["run"]
    if run.is_dir() and any(run.iterdir()) and not (run / "pipeline.json").is_file():
        raise CMTError(f"--out {run} is not empty and is not a pipeline run (cmt pipeline never writes into other "
                       "folders); choose a new or empty --out")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "pipeline.json", {k: to_dict(v) for k, v in cfgs.items() if k != "run"})
    times = run / "stage_times.json"
    timings = read_timings(times)

    def stage(name, done: bool, fn):
        if done:
            echo(f"[{name}] complete, skipped")
            return
        echo(f"[{name}] running")
        t0 = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - t0
        atomic_write_json(times, list(timings.items()))  # pairs: JSON objects are written with sorted keys
        echo(f"[{name}] done in {timings[name]:.0f} s")

    traj = Path(cfgs["generate"].out)
    stage("generate", store_done(traj), lambda: generate(cfgs["generate"], progress=progress))
    for name, fn in (("mid_train", mid_train), ("post_train", post_train)):
        cfg = cfgs[name]
        d = Path(cfg.out)
        stage(name, training_done(d, cfg.steps), lambda fn=fn, cfg=cfg, d=d: fn(cfg, resume=resume_arg(d),
                                                                                progress=progress))
    post = cfgs["post_train"]
    missing = [kept_checkpoint(post.out, k).name for k in (1, 2)
               if post.keep_best and not kept_checkpoint(post.out, k).exists()]
    if missing:
        raise CMTError(f"[post_train] keep_best is set but {post.out} has no {' or '.join(missing)} (it was "
                       "post-trained without keep_best); delete that folder to post-train again, or set keep_best "
                       "= false")
    results = {}
    for name, ecfg in evaluations(cfgs).items():
        path = Path(ecfg.out) / "evaluation.json"
        stage(f"evaluate {name}", path.exists(), lambda ecfg=ecfg: evaluate(ecfg, progress=False))
        results[name] = json.loads(path.read_text())
    save_loss_curves({"mid-training": run / "mid" / "log.jsonl", "post-training": run / "post" / "log.jsonl"},
                     run / "losses.png")
    report = write_report(run, cfgs, results, timings)
    return {"run": str(run), "report": str(report), "timings": timings, "results": results}


def read_timings(path: Path) -> dict:
    """stage_times.json's [stage, seconds] pairs, in run order; an unreadable file only loses the report's times."""
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text())}
    except (OSError, ValueError, TypeError):
        return {}


def save_loss_curves(logs: dict, out: Path) -> None:
    """One training-loss panel per stage ({title: log.jsonl})."""
    panels = {}
    for title, path in logs.items():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        panels[title] = {None: ([r["step"] for r in rows], [r["loss"] for r in rows])}
    save_curves(out, panels, ylabel="training loss")


METRICS = (("digits_fd", "digits FD", "{:.2f}"), ("digits_kid", "digits KID", "{:.3g}"), ("fid", "FID", "{:.2f}"),
           ("paired_mse", "paired MSE vs teacher", "{:.4f}"),
           ("flow_map_mse", "MSE vs exact flow map", "{:.4f}"), ("sliced_w2", "sliced W2", "{:.4f}"),
           ("nearest_digit_median", "nearest training digit (median L2)", "{:.2f}"),
           ("nearest_digit_close_share", "share nearer than real p1", "{:.3f}"))
REFERENCES = ("teacher-best", "teacher")  # the ratio columns' denominators: the best sampler, the trajectory solver


def sampled_in(results: dict) -> str:
    """The report's note on the precision the generators' networks ran at, when any ran under autocast."""
    used = sorted({r["config"].get("mixed_precision", "no") for r in results.values()} - {"no"})
    return (f" The networks sampled under {', '.join(used)} autocast (the solvers' arithmetic in float32; "
            "docs/evaluation.md, \"Precision\")." if used else "")


def kept_note(metrics_path: Path, post) -> str:
    """The report's line on which post-training steps the post rows score ([post_train] keep_best)."""
    best = json.loads(metrics_path.read_text()).get("best", {})
    kept = "; ".join(f"{k[0]} step{'s' * (k[0] != '1')}: step {b['step']} ({b['metric']} {b['value']:.2f})"
                     for k, b in sorted(best.items()))
    return (f"The post rows score post-training's held-out best (keep_best), chosen every {post.eval_every} steps "
            f"on its own evaluation (seed {EVAL_SEED}, {post.eval_samples} samples, a choose seed): {kept}.")


def write_report(run: Path, cfgs: dict, results: dict, timings: dict) -> Path:
    from .evaluation.run import with_spread as cell

    present = [m for m in METRICS if any(r["metrics"].get(m[0]) is not None for r in results.values())]
    key, label, _ = next((m for m in METRICS if m[0] in HEADLINE and m in present), (None, None, None))
    refs = REFERENCES if key else ()
    lines = [f"# Pipeline report: {run}", "",
             f"Teacher `{cfgs['generate'].teacher}`; {cfgs['generate'].num_samples} trajectories "
             f"({cfgs['generate'].solver} x {cfgs['generate'].steps}); mid-training {cfgs['mid_train'].steps} steps "
             f"({cfgs['mid_train'].flavour}); post-training {cfgs['post_train'].steps} steps "
             f"({cfgs['post_train'].objective}). Metrics on {cfgs['evaluate'].num_samples} samples, mean ± std over "
             f"the seeds each row names; paired error on the {cfgs['mid_train'].holdout} held-out trajectories."
             + sampled_in(results), "",
             f"The reference is the teacher at its best: `teacher-best`, {results['teacher-best']['generator']}."
             + (f" The ratio columns divide each row's mean {label} by its and by the trajectory solver's "
                f"(`teacher`, {results['teacher']['generator']})." if key else ""), "",
             "| generator | NFE | " + " | ".join(m[1] for m in present)
             + "".join(f" | {label} / {ref}" for ref in refs) + " |",
             "|---|---|" + "---|" * (len(present) + len(refs))]
    for name, r in results.items():
        cells = [cell(r["metrics"], k, fmt) for k, _, fmt in present]
        cells += [f"{r['metrics'][key] / results[ref]['metrics'][key]:.2f}x" for ref in refs]
        seeds = ", ".join(map(str, r.get("seeds", [r["config"]["seed"]])))
        lines.append(f"| {name} ({r['generator']}; seeds {seeds}) | {r['metrics']['nfe']} | "
                     + " | ".join(cells) + " |")
    floor = next((r["metrics"] for r in results.values() if "digits_fd_floor" in r["metrics"]), None)
    if floor is not None:
        lines += ["", f"Digits FD noise floor (two disjoint halves of the real digits, 898 vs 899): "
                      f"{cell(floor, 'digits_fd_floor', '{:.2f}')}. FD shrinks as samples grow, and each row compares "
                      f"{cfgs['evaluate'].num_samples} samples with all 1797 digits, so a good generator can read below "
                      "the floor; KID is unbiased, its floor 0 (docs/evaluation.md).", "",
                      f"Memorisation: a real digit lies {floor['nearest_digit_real_median']:.2f} (median L2) from its "
                      f"nearest other digit, and 1% of real digits lie nearer than "
                      f"{floor['nearest_digit_real_p1']:.2f}; a generator that copied its training digits would "
                      "read a smaller median and a share near 1 in the columns above, one that does not about 0.01."]
    if cfgs["post_train"].keep_best:
        lines += ["", kept_note(run / "post" / "metrics.json", cfgs["post_train"])]
    lines += ["", "Stage wall times, each from the run that made it: "
              + (", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "not recorded") + ".", "",
              "![losses](losses.png)", ""]
    lines += [f"**{name}**\n\n![{name}](eval/{name}/samples.png)\n" for name in results]
    path = run / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
