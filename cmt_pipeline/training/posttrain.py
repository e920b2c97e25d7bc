"""Post-training stage (`cmt post-train`): ECT or MeanFlow on the real data, by the shared loop, from one of three
initialisations, so they can be compared at equal budget:

- CMT: a mid-training model.ckpt (mid-cm for ECT, mid-mf for MeanFlow) or a consistency student folder;
- diffusion: a pretrain model.ckpt, a teacher folder or `builtin`, made into a student (consistency_student /
  MeanFlowStudent), the baseline the method claims to beat;
- random: the same architecture re-initialised (from --arch, else --channels).

Writes run/model.ckpt (kind "post-ect" / "post-meanflow"), run/eval.jsonl (1- and 2-step quality at step 0 = the
init, every eval_every steps and at the end), run/metrics.json (the final quality), run/samples-{1,2}step.png, and
with keep_best run/best-{1,2}step.ckpt (kept_checkpoint): the weights of the evaluation that read best at that step
count.
Quality is `cmt evaluate`'s: digits FD and KID for digits data; for gmm:<preset> data the 1-step error to the
exact flow map and the sliced W2 to the true mixture. Every evaluation uses the same seeded noise (evaluation
seed EVAL_SEED), so numbers compare across steps and runs.
A latent student (its VAE from --vae, else the one recorded with --init or --arch) trains on the data encoded
once to latents; its samples are decoded before they are measured or drawn.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..config import EvaluateConfig, PostTrainConfig
from ..evaluation.features import DigitsFD
from ..evaluation.metrics import HEADLINE
from ..evaluation.run import measure
from ..models import BoundaryDenoiser, MeanFlowStudent, as_denoiser, consistency_student
from ..models.io import is_checkpoint, load_model, network_spec, open_network, save_model
from ..objectives import from_config
from ..objectives.ect import ECTLoss
from ..objectives.meanflow import MeanFlowLoss
from ..plotting import save_image_grid
from ..priors import draw_priors
from ..sampling import StudentSampler, sample, student_grid, student_sigmas
from ..teachers import DiffusersDenoiser, EDMDenoiser, NativeDenoiser, load_teacher
from ..errors import CMTError
from ..files import atomic_write_json
from ..memory import check_memory
from ..seeding import seeded
from .lock import holds_run_folder
from .loop import EvalLog, SampleGrid, train
from .stage import fresh_network, image_source, process_of, set_dropout, training_images, with_time_scale

STUDENT_KINDS = {"ect": ("mid-cm", "post-ect"), "meanflow": ("mid-mf", "post-meanflow")}
MID_FLAVOUR = {"ect": "cm", "meanflow": "mf"}
DEFAULT_NOISE = {"ect": (-1.1, 2.0), "meanflow": (-0.4, 1.0)}
EVAL_SEED = 1  # not the training seed's default 0: students are scored on noise they never trained on


def read_network(spec: str, option: str):
    """open_network, with the option named in a folder's error (a checkpoint's errors name their file)."""
    try:
        return open_network(spec)
    except CMTError as e:
        if is_checkpoint(spec):
            raise
        raise CMTError(f"{option} {spec}: {e}") from e


def opened_network(cfg: PostTrainConfig):
    """The network of --init (--arch for --init random), opened once: the student is built from it and its
    checkpoint's VAE record read from it; None for --init random without --arch."""
    spec = cfg.arch if cfg.init == "random" else cfg.init
    return read_network(spec, "--arch" if cfg.init == "random" else "--init") if spec else None


def load_network(spec: str, objective: str, opened=None) -> tuple[torch.nn.Module, str]:
    """(network, origin) for --init (`opened`, if the caller has opened it): origin 'cmt' (a student of the
    objective's flavour) or 'diffusion'. A student of the other flavour is refused here, before anything is
    written."""
    want = STUDENT_KINDS[objective]
    wrong = (f"; {objective} post-training starts from a {want[0]} checkpoint (`cmt mid-train --flavour "
             f"{MID_FLAVOUR[objective]}`), a diffusion teacher or random")
    net, kind, record = opened or read_network(spec, "--init")
    if record is not None and kind != "pretrain":
        if kind not in want:
            raise CMTError(f"--init {spec} is a {kind!r} checkpoint{wrong}")
        return net, "cmt"
    if isinstance(net, (DiffusersDenoiser, NativeDenoiser)):
        return net, "diffusion"
    if not isinstance(net, EDMDenoiser):
        raise CMTError(f"--init {spec} is a {type(net).__name__}, which has no network to train{wrong}")
    if net.precond.boundary_sigma > 0:  # a consistency student folder (mid-train's run/student/)
        if objective != "ect":
            raise CMTError(f"--init {spec} is a consistency student folder{wrong}")
        return net, "cmt"
    return net, "diffusion"


def random_network(cfg: PostTrainConfig, shape, opened=None) -> EDMDenoiser | NativeDenoiser:
    """Fresh weights in the architecture of --arch (a model.ckpt of any kind or a teacher spec: the project's EDM
    network or a native one), else of --channels/--layers-per-block."""
    if not cfg.arch:
        return fresh_network(shape, cfg.seed, None, cfg.channels, cfg.layers_per_block, time_scale=cfg.time_scale)
    template = (opened or read_network(cfg.arch, "--arch")).module
    template = template.net if isinstance(template, (MeanFlowStudent, BoundaryDenoiser)) else template
    if not isinstance(template, (EDMDenoiser, NativeDenoiser)):
        raise CMTError(f"--arch {cfg.arch} is a {type(template).__name__}, which has no network architecture; "
                       "pass a model.ckpt, a network folder or builtin, or use --channels")
    net = fresh_network(shape, cfg.seed, network_spec(template))  # the architecture, fresh weights
    if isinstance(net, EDMDenoiser):
        net.precond.boundary_sigma = 0.0
    return net


def build_student(cfg: PostTrainConfig, shape, opened=None) -> tuple[torch.nn.Module, str]:
    """The student to post-train and where it came from ('cmt', 'diffusion' or 'random'); `opened` is
    opened_network(cfg) where the caller has it."""
    if cfg.init == "random":
        net, origin = random_network(cfg, shape, opened), "random"
    else:
        net, origin = load_network(cfg.init, cfg.objective, opened)
    if origin != "cmt":
        with seeded(cfg.seed):  # a new MeanFlow gap embedding's first layer
            try:
                net = consistency_student(net, cfg.sigma_min_shift) if cfg.objective == "ect" else MeanFlowStudent(net)
            except ValueError as e:  # a network MeanFlow cannot extend
                raise CMTError(str(e)) from e
    set_dropout(net, cfg.dropout)
    if tuple(net.shape) != tuple(shape):
        raise CMTError(f"--init {cfg.init} works on shape {tuple(net.shape)} but --data {cfg.data} has {tuple(shape)}; "
                       "post-train on the data the network was made for")
    return net.train().requires_grad_(True), origin


def build_objective(cfg: PostTrainConfig, student):
    if cfg.objective == "ect":
        return from_config(ECTLoss, cfg, sigma_data=student.precond.sigma_data)
    return from_config(MeanFlowLoss, cfg)


def validate(cfg: PostTrainConfig) -> PostTrainConfig:
    """Check what the fields' own choices and ranges cannot (config.py checks those); returns cfg with the
    objective's default noise distribution filled in (recorded)."""
    checks = [
        (bool(cfg.init), "--init is required: a mid-training model.ckpt, a diffusion teacher (pretrain model.ckpt, "
                         "teacher folder or builtin) or random"),
        (0 < cfg.sigma_mid < cfg.sigma_max, f"need 0 < sigma_mid < sigma_max, got {cfg.sigma_mid}, {cfg.sigma_max}"),
        (cfg.eval_every > 0 or not cfg.keep_best, "--keep-best chooses among the evaluations every --eval-every "
                                                  "steps: pass --eval-every N > 0 (or drop --keep-best)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise CMTError(msg)
    p_mean, p_std = DEFAULT_NOISE[cfg.objective]
    return dataclasses.replace(cfg, p_mean=p_mean if cfg.p_mean is None else cfg.p_mean,
                               p_std=p_std if cfg.p_std is None else cfg.p_std)


class FewStepEval:
    """measure(model) for the loop's EvalLog: `cmt evaluate`'s metrics of the student at 1 and 2 steps on the
    same seeded noise every time (evaluation seed EVAL_SEED), keyed '<steps>step_<metric>': digits FD and KID for
    digits data, the exact-flow-map error (1 step) and sliced W2 to the true mixture for gmm:<preset> data. A
    latent student's samples are decoded by `vae` (a LatentCodec) first."""

    KEYS = ("digits_fd", "digits_kid", "fid", "flow_map_mse", "sliced_w2")

    def __init__(self, cfg: PostTrainConfig, shape, device, vae=None):
        # sampling, priors, re-noise and decoded images of every evaluation: refused here, before the run folder
        check_memory("--eval-samples", cfg.eval_samples, 4 * 4 * math.prod(shape), "each evaluation's samples")
        self.cfg = EvaluateConfig(num_samples=cfg.eval_samples, seed=EVAL_SEED, sigma_max=cfg.sigma_max,
                                  sigma_mid=cfg.sigma_mid)
        self.device, self.vae = device, vae
        self.gmm = load_teacher(cfg.data) if cfg.data.startswith("gmm:") else None

    def sampler(self, model, steps: int) -> StudentSampler:
        return StudentSampler(as_denoiser(model), student_sigmas(steps, self.cfg.sigma_max, self.cfg.sigma_mid))

    def __call__(self, model) -> dict:
        out, was_training = {}, model.training
        try:
            for steps in (1, 2):
                m = measure(self.cfg, self.sampler(model.eval(), steps), self.vae, self.gmm, None, self.device,
                            EVAL_SEED, False)["metrics"]
                out.update({f"{steps}step_{k}": v for k, v in m.items() if k in self.KEYS})
        finally:
            model.train(was_training)
        return out

    def samples(self, model, steps: int, num: int) -> torch.Tensor:
        """The first `num` evaluation samples (at most eval_samples; decoded), for the final pictures."""
        was_training = model.training
        try:
            x = sample(self.sampler(model.eval(), steps), min(num, self.cfg.num_samples), EVAL_SEED,
                       device=self.device)[0]
        finally:
            model.train(was_training)
        return x if self.vae is None else self.vae.decode(x)


def kept_checkpoint(run, steps: int) -> Path:
    """Where --keep-best keeps a post-training run's best weights at `steps` (1 or 2) sampling steps."""
    return Path(run) / f"best-{steps}step.ckpt"


class KeepBest:
    """Loop callback after the EvalLog (--keep-best): whenever an evaluation reads the lowest held-out quality so far
    at k steps (HEADLINE's first metric, on evaluation seed EVAL_SEED, a choose seed: never a reported one), write
    the weights as kept_checkpoint(run, k), the model.ckpt the run would have ended with at that step, with the
    evaluation recorded as `selected`. ECT's few-step quality peaks at a step that depends on the training seed,
    and its 1- and 2-step peaks differ (docs/results.md), so each step count keeps its own. The bar is the best
    written so far, read back from the files on resume (unless --eval-samples changed); the initialisation (step 0)
    is never kept."""

    def __init__(self, log: EvalLog, cfg: PostTrainConfig, kind: str, data_info: dict):
        self.log, self.cfg, self.kind, self.data = log, cfg, kind, data_info
        self.kept = {}  # steps -> the `selected` record of its kept file

    def start(self, resume: str | None, is_main_process: bool) -> None:
        if not is_main_process:
            return
        for steps in (1, 2):
            path = kept_checkpoint(self.cfg.out, steps)
            if resume is None and not any((Path(self.cfg.out) / "checkpoints").glob("step-*")):
                path.unlink(missing_ok=True)  # a fresh run: nothing earlier is a candidate
            try:
                kept = load_model(path)["selected"]
            except (CMTError, KeyError):
                continue
            if kept["eval_samples"] == self.cfg.eval_samples:  # FD depends on the sample count: else no bar
                self.kept[steps] = kept

    def __call__(self, s) -> None:
        if not s.accelerator.is_main_process or self.log.last.get("step") != s.step:
            return
        for steps in (1, 2):
            metric = next(m for m in HEADLINE if f"{steps}step_{m}" in self.log.last)
            value = self.log.last[f"{steps}step_{metric}"]
            if value < self.kept.get(steps, {}).get("value", math.inf):  # NaN never is
                self.kept[steps] = {"steps": steps, "metric": metric, "value": value, "step": s.step,
                                    "eval_seed": EVAL_SEED, "eval_samples": self.cfg.eval_samples}
                save_model(kept_checkpoint(self.cfg.out, steps), kind=self.kind, model=s.model, ema_model=s.ema,
                           step=s.step, config=dataclasses.asdict(self.cfg), data=self.data,
                           selected=self.kept[steps])

    def summary(self) -> dict:
        """{"<k>step": {step, metric, value}} of the kept files, for metrics.json."""
        return {f"{steps}step": {k: sel[k] for k in ("step", "metric", "value")}
                for steps, sel in sorted(self.kept.items())}


@holds_run_folder
def post_train(cfg: PostTrainConfig, resume: str | None = None, progress: bool = True, callbacks=()) -> dict:
    """Run (or resume) post-training; returns a summary with the final 1- and 2-step metrics."""
    cfg = validate(cfg)
    process = process_of(cfg)
    opened = opened_network(cfg)
    data, vae = training_images(cfg, cfg.arch if cfg.init == "random" else cfg.init, process.device,
                                progress and process.is_main_process, opened.record if opened else None)
    student, origin = build_student(cfg, data.shape, opened)
    cfg = with_time_scale(cfg, student, f"--arch {cfg.arch}" if cfg.init == "random" else f"--init {cfg.init}")
    if student.num_classes and data.labels is None:
        raise CMTError(f"--init {cfg.init} is class-conditional but --data {cfg.data} has no labels")
    source, info = image_source(data, bool(student.num_classes), cfg, init=cfg.init, init_origin=origin)

    run = Path(cfg.out)
    evaluator = FewStepEval(cfg, student.shape, process.device, vae)
    images = vae.image_shape(student.shape) if vae is not None else tuple(student.shape)
    if cfg.keep_best and not (cfg.data.startswith("gmm:") or images == DigitsFD.shape):
        raise CMTError(f"--keep-best ranks evaluations by digits FD (1x8x8 images) or the sliced W2 of gmm:<preset> "
                       f"data, and --data {cfg.data} makes {images} images, which have neither; drop "
                       "--keep-best")
    log = EvalLog(evaluator, run / "eval.jsonl", cfg.eval_every)
    log.start(student.to(process.device), resume, process.is_main_process)
    kind = f"post-{cfg.objective}"
    keep = KeepBest(log, cfg, kind, info) if cfg.keep_best else None
    if keep:
        keep.start(resume, process.is_main_process)
    grid_prior, grid_labels = draw_priors(EVAL_SEED, np.arange(cfg.num_grid_samples), data.shape,
                                          student.num_classes, "random")
    grid = student_grid(torch.from_numpy(grid_prior), torch.from_numpy(grid_labels) if student.num_classes else None,
                        cfg.sigma_max, vae)

    t0 = time.perf_counter()
    state = train(student, build_objective(cfg, student), source, cfg, kind=kind, data_info=info, resume=resume,
                  progress=progress, callbacks=[log, *([keep] if keep else []),
                                                SampleGrid(grid, cfg.sample_every, at_end=False), *callbacks])
    metrics = {"step": state.step, "init": cfg.init, "init_origin": origin, "objective": cfg.objective,
               "sigma_max": cfg.sigma_max, "sigma_mid": cfg.sigma_mid, "eval_samples": cfg.eval_samples,
               "eval_seed": EVAL_SEED}
    if state.accelerator.is_main_process:
        final = log.last if log.last.get("step") == state.step else evaluator(state.ema)  # nothing left to train
        metrics.update({k: v for k, v in final.items() if k != "step"})
        if keep:
            metrics["best"] = keep.summary()
        for steps in (1, 2):
            save_image_grid(evaluator.samples(state.ema, steps, cfg.num_grid_samples),
                            run / f"samples-{steps}step.png")
        atomic_write_json(run / "metrics.json", metrics)  # last: its presence marks a finished run
    state.accelerator.wait_for_everyone()
    return {"out": str(run), "seconds": time.perf_counter() - t0, "loss": state.metrics.get("loss"),
            "checkpoint": str(run / "model.ckpt"), **metrics}
