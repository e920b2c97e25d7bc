"""Post-training stage (`cmt post-train`): ECT or MeanFlow on the real data, by the shared loop, from one of three
initialisations, so they can be compared at equal budget:

- CMT: a mid-training model.ckpt (mid-cm for ECT, mid-mf for MeanFlow) or a consistency student folder;
- diffusion: a pretrain model.ckpt, a teacher folder or `builtin`, made into a student (consistency_student /
  MeanFlowStudent), the baseline the method claims to beat;
- random: the same architecture re-initialised (from --arch, else --channels).

Writes run/model.ckpt (kind "post-ect" / "post-meanflow"), run/eval.jsonl (1- and 2-step quality at step 0 = the
init, every eval_every steps and at the end), run/metrics.json (the final quality), run/samples-{1,2}step.png.
Quality: digits FD for digits data; for gmm:<preset> data the 1-step error to the exact flow map and the sliced
W2 to the true mixture. Every evaluation uses the same seeded noise, so numbers compare across steps and runs.
A latent student (its VAE from --vae, else the one recorded with --init or --arch) trains on the data encoded
once to latents; its samples are decoded before they are measured or drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..config import PostTrainConfig
from ..datasets import load_images
from ..evaluation.features import DigitsFD
from ..evaluation.metrics import exact_flow_map, mse_psnr, sliced_wasserstein
from ..latents import encode_images, load_vae
from ..models import MeanFlowStudent, as_denoiser, consistency_student
from ..models.io import build_network, is_checkpoint, network_spec, open_network
from ..objectives.ect import ECTLoss
from ..objectives.meanflow import MeanFlowLoss
from ..plotting import save_image_grid
from ..priors import REFERENCE, draw_priors, draw_renoise, stream_seed
from ..sampling import StudentSampler, run_sampler, student_sigmas
from ..teachers import DiffusersDenoiser, EDMDenoiser, Precond, build_unet, load_teacher
from ..utils import CMTError, atomic_write_json, seeded
from .data import TensorSource
from .lock import holds_run_folder
from .loop import SampleGrid, due, train

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


def load_network(spec: str, objective: str) -> tuple[torch.nn.Module, str]:
    """(network, origin) for --init: origin 'cmt' (a student of the objective's flavour) or 'diffusion'.
    A student of the other flavour is refused here, before anything is written."""
    want = STUDENT_KINDS[objective]
    wrong = (f"; {objective} post-training starts from a {want[0]} checkpoint (`cmt mid-train --flavour "
             f"{MID_FLAVOUR[objective]}`), a diffusion teacher or random")
    net, kind, record = read_network(spec, "--init")
    if record is not None and kind != "pretrain":
        if kind not in want:
            raise CMTError(f"--init {spec} is a {kind!r} checkpoint{wrong}")
        return net, "cmt"
    if isinstance(net, DiffusersDenoiser):
        return net, "diffusion"
    if not isinstance(net, EDMDenoiser):
        raise CMTError(f"--init {spec} is a {type(net).__name__}, which has no network to train{wrong}")
    if net.precond.boundary_sigma > 0:  # a consistency student folder (mid-train's run/student/)
        if objective != "ect":
            raise CMTError(f"--init {spec} is a consistency student folder{wrong}")
        return net, "cmt"
    return net, "diffusion"


def random_network(cfg: PostTrainConfig, shape) -> EDMDenoiser:
    """Fresh weights in the architecture of --arch (a model.ckpt of any kind or a teacher spec), else of
    --channels/--layers-per-block."""
    if not cfg.arch:
        with seeded(cfg.seed):
            return EDMDenoiser(build_unet(shape, tuple(cfg.channels), cfg.layers_per_block), Precond())
    template = read_network(cfg.arch, "--arch").module
    template = template.net if isinstance(template, MeanFlowStudent) else template
    if not isinstance(template, EDMDenoiser):
        raise CMTError(f"--arch {cfg.arch} is a {type(template).__name__}, which has no network architecture; "
                       "pass a model.ckpt, a network folder or builtin, or use --channels")
    with seeded(cfg.seed):
        net = build_network(network_spec(template))  # the architecture, fresh weights
    net.precond.boundary_sigma = 0.0
    return net


def build_student(cfg: PostTrainConfig, shape) -> tuple[torch.nn.Module, str]:
    """The student to post-train and where it came from ('cmt', 'diffusion' or 'random')."""
    if cfg.init == "random":
        net, origin = random_network(cfg, shape), "random"
    else:
        net, origin = load_network(cfg.init, cfg.objective)
    if origin != "cmt":
        with seeded(cfg.seed):  # a new MeanFlow gap embedding's first layer
            net = consistency_student(net, cfg.sigma_min_shift) if cfg.objective == "ect" else MeanFlowStudent(net)
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = cfg.dropout
    if tuple(net.shape) != tuple(shape):
        raise CMTError(f"--init {cfg.init} works on shape {tuple(net.shape)} but --data {cfg.data} has {tuple(shape)}; "
                       "post-train on the data the network was made for")
    return net.train().requires_grad_(True), origin


def build_objective(cfg: PostTrainConfig, student):
    if cfg.objective == "ect":
        return ECTLoss(cfg.p_mean, cfg.p_std, cfg.q, cfg.q_double_every, cfg.distance, cfg.huber_c,
                       cfg.edm_weighting, student.precond.sigma_data)
    return MeanFlowLoss(cfg.p_mean, cfg.p_std, cfg.r_fraction, cfg.adaptive_p, cfg.adaptive_c,
                        sigma_max=cfg.sigma_max)


def validate(cfg: PostTrainConfig) -> PostTrainConfig:
    """Check what the fields' own choices and ranges cannot (config.py checks those); returns cfg with the
    objective's default noise distribution filled in (recorded)."""
    checks = [
        (bool(cfg.init), "--init is required: a mid-training model.ckpt, a diffusion teacher (pretrain model.ckpt, "
                         "teacher folder or builtin) or random"),
        (0 < cfg.sigma_mid < cfg.sigma_max, f"need 0 < sigma_mid < sigma_max, got {cfg.sigma_mid}, {cfg.sigma_max}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise CMTError(msg)
    p_mean, p_std = DEFAULT_NOISE[cfg.objective]
    return dataclasses.replace(cfg, p_mean=p_mean if cfg.p_mean is None else cfg.p_mean,
                               p_std=p_std if cfg.p_std is None else cfg.p_std)


@functools.lru_cache(maxsize=4)
def gmm_truth(spec: str, n: int, sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact flow map of the n evaluation priors, n exact mixture samples from the priors' reference stream, so
    no mixture sample shares a seed with an evaluation prior); cached, as the float64 reference
    solve costs more than a short run's evaluations and every run of a comparison shares it."""
    gmm = load_teacher(spec)
    prior, _ = draw_priors(EVAL_SEED, np.arange(n), gmm.shape, 0, "random")
    exact = exact_flow_map(gmm, prior, sigma_max).float()
    return exact, gmm.sample(n, torch.Generator().manual_seed(stream_seed(EVAL_SEED, 0, REFERENCE)))


class FewStepEval:
    """1- and 2-step quality of a student on fixed seeded noise: digits FD (digits data); exact flow-map MSE
    (1 step: a deterministic map of x_T) and sliced W2 to the true mixture (gmm:<preset> data). A latent
    student's samples are decoded by `vae` (a LatentCodec) first."""

    def __init__(self, cfg: PostTrainConfig, shape, num_classes: int, device, vae=None):
        idx = np.arange(cfg.eval_samples)
        self.device, self.sigma_max, self.vae = device, cfg.sigma_max, vae
        self.prior, self.labels = draw_priors(EVAL_SEED, idx, shape, num_classes, "random")
        self.renoise = draw_renoise(EVAL_SEED, idx, shape, 1)
        self.sigmas = {k: student_sigmas(k, cfg.sigma_max, cfg.sigma_mid) for k in (1, 2)}
        self.fd = DigitsFD(device) if cfg.data == "digits" else None
        self.exact, self.reference = gmm_truth(cfg.data, cfg.eval_samples, cfg.sigma_max) \
            if cfg.data.startswith("gmm:") else (None, None)

    def samples(self, model, steps: int, num: int | None = None) -> torch.Tensor:
        """The first `num` (default all) samples, in eval mode (no dropout); the model's mode is left as it was."""
        was_training = model.training
        sampler = StudentSampler(as_denoiser(model).eval(), self.sigmas[steps])
        try:
            x = run_sampler(sampler, self.prior[:num], self.labels[:num],
                            self.renoise[:num] if steps == 2 else None, device=self.device)
        finally:
            model.train(was_training)
        return x if self.vae is None else self.vae.decode(x)

    def __call__(self, model) -> dict:
        """{'1step_<metric>': value, '2step_<metric>': value, ...} for the metrics that apply to the data."""
        out = {}
        for steps in (1, 2):
            x = self.samples(model, steps)
            if not torch.isfinite(x).all():
                raise CMTError(f"the student's {steps}-step samples are not finite (training diverged); "
                               "lower --lr or use --distance huber")
            if self.fd is not None:
                out[f"{steps}step_digits_fd"] = self.fd(x)
            if self.exact is not None:
                if steps == 1:
                    out["1step_flow_map_mse"] = mse_psnr(x, self.exact)["mse"]
                out[f"{steps}step_sliced_w2"] = sliced_wasserstein(x, self.reference)
        return out


class EvalLog:
    """Callback: append the EMA student's FewStepEval row to run/eval.jsonl every `every` steps and at the end."""

    def __init__(self, evaluator: FewStepEval, path: Path, every: int):
        self.evaluator, self.path, self.every, self.last = evaluator, path, every, {}

    def measure(self, model, step: int) -> dict:
        self.last = {"step": step, **self.evaluator(model)}
        with open(self.path, "a") as f:
            f.write(json.dumps(self.last) + "\n")
        return self.last

    def __call__(self, s):
        if due(s, self.every):
            self.measure(s.ema, s.step)


@holds_run_folder
def post_train(cfg: PostTrainConfig, resume: str | None = None, progress: bool = True, callbacks=()) -> dict:
    """Run (or resume) post-training; returns a summary with the final 1- and 2-step metrics."""
    cfg = validate(cfg)
    from accelerate import PartialState

    process = PartialState(cpu=cfg.device == "cpu")  # this process's device and rank, before the loop starts
    data = load_images(cfg.data, cfg.gmm_samples, cfg.seed)
    vae = load_vae(cfg.vae, cfg.arch if cfg.init == "random" else cfg.init, process.device)
    if vae is not None:
        if cfg.data.startswith("gmm:"):
            raise CMTError(f"--data {cfg.data} is measured against its exact mixture in its own space; a latent "
                           "student (with a VAE) needs image data: digits, an image folder or a .npy array")
        data = encode_images(data, vae, progress=progress and process.is_main_process)
    student, origin = build_student(cfg, data.shape)
    if student.num_classes and data.labels is None:
        raise CMTError(f"--init {cfg.init} is class-conditional but --data {cfg.data} has no labels")
    tensors = {"image": data.images, **({"labels": data.labels} if student.num_classes else {})}
    source = TensorSource(tensors, cfg.batch_size, cfg.seed)
    info = {**data.description, "fingerprint": source.fingerprint(), "init": cfg.init, "init_origin": origin}

    run = Path(cfg.out)
    evaluator = FewStepEval(cfg, data.shape, student.num_classes, process.device, vae)
    log = EvalLog(evaluator, run / "eval.jsonl", cfg.eval_every)
    if resume is None and process.is_main_process and not any((run / "checkpoints").glob("step-*")):
        run.mkdir(parents=True, exist_ok=True)
        (run / "eval.jsonl").unlink(missing_ok=True)
        log.measure(student.to(process.device), 0)
    grid = torch.from_numpy(evaluator.prior[: cfg.num_grid_samples])
    grid_labels = torch.from_numpy(evaluator.labels[: cfg.num_grid_samples]) if student.num_classes else None

    def one_step(model):
        dev = next(model.parameters()).device
        with torch.no_grad():
            x = as_denoiser(model).eval()(grid.to(dev) * cfg.sigma_max, cfg.sigma_max,
                                          grid_labels.to(dev) if grid_labels is not None else None)
        return x if vae is None else vae.to(dev).decode(x)

    t0 = time.perf_counter()
    state = train(student, build_objective(cfg, student), source, cfg, kind=f"post-{cfg.objective}", data_info=info,
                  resume=resume, progress=progress, callbacks=[log, SampleGrid(one_step, cfg.sample_every, at_end=False),
                                                               *callbacks])
    metrics = {"step": state.step, "init": cfg.init, "init_origin": origin, "objective": cfg.objective,
               "sigma_max": cfg.sigma_max, "sigma_mid": cfg.sigma_mid, "eval_samples": cfg.eval_samples,
               "eval_seed": EVAL_SEED}
    if state.accelerator.is_main_process:
        final = log.last if log.last.get("step") == state.step else evaluator(state.ema)  # nothing left to train
        metrics.update({k: v for k, v in final.items() if k != "step"})
        for steps in (1, 2):
            save_image_grid(evaluator.samples(state.ema, steps, cfg.num_grid_samples),
                            run / f"samples-{steps}step.png")
        atomic_write_json(run / "metrics.json", metrics)  # last: its presence marks a finished run
    state.accelerator.wait_for_everyone()
    return {"out": str(run), "seconds": time.perf_counter() - t0, "loss": state.metrics.get("loss"),
            "checkpoint": str(run / "model.ckpt"), **metrics}
