"""Mid-training stage (`cmt mid-train`): a flow-map student regressed onto stored teacher trajectories (CMT),
by the shared loop. Writes run/model.ckpt (kind "mid-cm" or "mid-mf"), run/eval.jsonl (the 1-step error on
held-out and on trained-on trajectories every eval_every steps, step 0 = the initialisation) with its curve
run/eval.png, and for the CM flavour run/student/ (teachers in the EDM folder format), the EMA student in that
format."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from ..config import MidTrainConfig
from ..evaluation.metrics import exact_flow_map, mse_psnr, paired_samples
from ..latents import load_vae
from ..models import MeanFlowStudent, as_denoiser, consistency_student
from ..models.io import export_denoiser, network_spec
from ..objectives import from_config
from ..objectives.cmt import CMTLoss, CMTMeanFlowLoss
from ..objectives.lpips import LPIPS
from ..plotting import save_curves
from ..sampling import StudentSampler, student_grid
from ..stores import open_store, read_head, read_tail
from ..teachers import EDMDenoiser, GMMDenoiser, GuidedDenoiser, load_teacher
from ..errors import CMTError
from .lock import holds_run_folder
from .loop import EvalLog, SampleGrid, train
from .stage import fresh_network, grid_noise, process_of, set_dropout, with_time_scale
from .trajectories import trajectory_source


def build_student(cfg: MidTrainConfig, teacher, shape) -> torch.nn.Module:
    """The student network: the teacher's own network (init=teacher; a guided teacher's conditional network, so
    one call learns the guided flow) or the same architecture re-initialised; a small UNet for a GMM teacher."""
    net = teacher.inner if isinstance(teacher, GuidedDenoiser) else teacher
    if cfg.init == "teacher":
        if isinstance(net, GMMDenoiser):
            raise CMTError("--init teacher needs a network teacher; a Gaussian-mixture teacher has none "
                           "(use --init random)")
        net = copy.deepcopy(net)
    else:  # the teacher's architecture (a GMM teacher's: a small UNet), rebuilt with fresh weights
        net = fresh_network(shape, cfg.seed, network_spec(net), cfg.channels, cfg.layers_per_block, net.num_classes,
                            time_scale=cfg.time_scale)
    set_dropout(net, cfg.dropout, label_dropout=0.0)
    if cfg.flavour == "cm":
        return consistency_student(net, cfg.sigma_min_shift)
    try:
        return MeanFlowStudent(net).train().requires_grad_(True)
    except ValueError as e:
        raise CMTError(str(e)) from e


def lpips_distance(cfg: MidTrainConfig, plan: dict) -> LPIPS | None:
    """--distance lpips: the frozen LPIPS network, loaded once from the two local weight files (the loss moves it
    to the student's device); None for the other distances."""
    if cfg.distance != "lpips":
        return None
    if plan["shape"][0] not in (1, 3) or plan.get("vae"):
        raise CMTError(f"--distance lpips needs 1- or 3-channel pixel images, but {cfg.data} holds "
                       f"{'latents' if plan.get('vae') else 'images'} of shape {tuple(plan['shape'])}; "
                       "use --distance l2 or huber")
    return LPIPS.from_files(cfg.lpips_vgg, cfg.lpips_heads, cfg.lpips_size)


def holdout_error(data: dict, sigma_max: float, exact=None, seen: dict | None = None):
    """measure(model) for the loop's EvalLog: the 1-step error on held-out trajectories (evaluation's paired error
    against the stored solver sample: teacher matching), for a Gaussian-mixture teacher also against the exact
    flow map, and the same error on trajectories it trains on (`seen`) as train_mse: a held-out error well above
    it means the student memorises its trajectories, and a bigger store is what helps."""

    def measure(model) -> dict:
        sampler = StudentSampler(as_denoiser(model).eval(), [sigma_max])
        device = next(model.parameters()).device
        x, err = paired_samples(sampler, data, device=device)
        out = {"teacher_mse": err["mse"], **({"exact_mse": mse_psnr(x, exact)["mse"]} if exact is not None else {})}
        if seen is not None:
            out["train_mse"] = paired_samples(sampler, seen, device=device)[1]["mse"]
        return out

    return measure


def plot_curve(path: Path, out: Path, title: str) -> None:
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a resumed run re-measures: keep the last
    steps = sorted(rows)
    series = {label: (steps, [rows[s][key] for s in steps])
              for key, label in (("teacher_mse", "held out, vs teacher's solver sample"),
                                 ("exact_mse", "held out, vs exact flow map"),
                                 ("train_mse", "trained on, vs teacher's solver sample"))
              if all(key in rows[s] for s in steps)}  # a run resumed from an older version lacks train_mse early on
    save_curves(out, {title: series}, xlabel="mid-training step", ylabel="1-step MSE")


@holds_run_folder
def mid_train(cfg: MidTrainConfig, resume: str | None = None, progress: bool = True, callbacks=()) -> dict:
    """Run (or resume) mid-training; `callbacks` are extra per-step hooks for library users (see training/loop.py)."""
    if not cfg.data:
        raise CMTError("mid-training needs --data: a trajectory store made by `cmt generate-trajectories`")
    reader = open_store(cfg.data)  # once: its checks, the plan, the training data, the held-out samples
    source, info = trajectory_source(cfg.data, cfg.batch_size, cfg.seed, cfg.holdout, reader=reader)
    plan = reader.plan
    teacher_spec = cfg.teacher or plan["teacher"]["spec"]
    guidance = plan.get("guidance") or {}
    teacher = load_teacher(teacher_spec, guidance_scale=guidance.get("scale", 1.0), null_label=guidance.get("null_label"))
    if tuple(teacher.shape) != tuple(plan["shape"]):
        raise CMTError(f"--teacher {teacher_spec} works on shape {tuple(teacher.shape)} but the store holds "
                       f"{tuple(plan['shape'])}; pass the teacher the store was made with")
    vae = load_vae(cfg.vae, cfg.data, shape=plan["shape"], record=plan)  # a latent store's VAE: decodes the sample grids
    student = build_student(cfg, teacher, tuple(plan["shape"]))
    cfg = with_time_scale(cfg, student, f"the teacher {teacher_spec}'s network")
    sigmas = torch.tensor(plan["sigmas"], dtype=torch.float64)
    objective = (from_config(CMTLoss, cfg, sigmas=sigmas, lpips=lpips_distance(cfg, plan)) if cfg.flavour == "cm"
                 else from_config(CMTMeanFlowLoss, cfg, sigmas=sigmas))

    run = Path(cfg.out)
    callbacks = list(callbacks)
    if cfg.holdout > 0:
        num = min(cfg.eval_samples, cfg.holdout)
        data = read_tail(cfg.data, num, reader)  # as `cmt evaluate`'s paired error
        seen = read_head(cfg.data, min(num, plan["num_samples"] - cfg.holdout), reader)
        exact = exact_flow_map(teacher, data["prior"], plan["sigmas"][0], plan["sigmas"][-1]).float() \
            if isinstance(teacher, GMMDenoiser) else None
        log = EvalLog(holdout_error(data, plan["sigmas"][0], exact, seen), run / "eval.jsonl", cfg.eval_every)
        log.start(student, resume, process_of(cfg).is_main_process)
        callbacks.append(log)
    grid_prior, grid_labels = grid_noise(cfg.num_grid_samples, plan["shape"], teacher.num_classes, cfg.seed)
    callbacks.append(SampleGrid(student_grid(grid_prior, grid_labels, plan["sigmas"][0], vae), cfg.sample_every))
    info = {**info, "teacher": teacher_spec, "vae": vae.describe(plan["shape"]) if vae is not None else None}
    t0 = time.perf_counter()
    state = train(student, objective, source, cfg, kind=f"mid-{cfg.flavour}", data_info=info, resume=resume,
                  callbacks=callbacks, progress=progress)
    if state.accelerator.is_main_process:
        if cfg.holdout > 0:
            plot_curve(run / "eval.jsonl", run / "eval.png", f"CMT ({cfg.flavour}) on {Path(cfg.data).name}")
        if cfg.flavour == "cm" and isinstance(state.ema, EDMDenoiser):  # others: model.ckpt only
            export_denoiser(state.ema, run / "student", vae=vae)
    state.accelerator.wait_for_everyone()
    last = {}
    if (run / "eval.jsonl").exists():
        last = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])
    return {"out": str(run), "step": state.step, "seconds": time.perf_counter() - t0,
            "loss": state.metrics.get("loss"), "checkpoint": str(run / "model.ckpt"), **last}
