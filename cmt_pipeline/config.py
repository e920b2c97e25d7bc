"""Configuration: one dataclass per stage, loaded from a section of configs/*.toml, overridable from the CLI,
and written next to every output so each dataset and checkpoint says how it was made."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from typing import ClassVar, get_type_hints
from pathlib import Path

from .errors import CMTError


@dataclass
class GenerateConfig:
    """`cmt generate-trajectories`: the teacher's ODE solve from seeded prior noise, stored as shards."""

    teacher: str = "builtin"  # a model folder, gmm:<preset>, or builtin (the shipped digits teacher)
    out: str = "runs/trajectories"
    num_samples: int = 1024
    solver: str = "dpm3"  # euler | heun | dpm2 | dpm3
    steps: int = 16
    grid: str = "logsnr"  # logsnr (paper) | karras
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    format: str = "zarr"  # zarr | wds
    dtype: str = "float16"  # storage dtype of traj and x0 (prior is always float32)
    batch_size: int = 256
    shard_size: int = 1024
    seed: int = 0
    class_labels: str = "random"  # random | none | an integer class for every sample
    guidance_scale: float = 1.0  # classifier-free guidance of a class-conditional teacher; 1 = none
    null_label: int | None = None  # guidance's "no class" label; default: the model's own null row (DiT)
    vae: str = ""  # latent teacher: its AutoencoderKL folder; default: the teacher folder's vae/, if any
    device: str = "auto"


@dataclass
class EvaluateConfig:
    """`cmt evaluate`: sample a generator (a teacher with a solver, or a student at 1 or 2 steps) and measure it."""

    teacher: str = "builtin"  # generator when no student is given: a model folder, gmm:<preset>, or builtin
    solver: str = "dpm3"  # the teacher's ODE solver: euler | heun | dpm2 | dpm3
    grid: str = "logsnr"  # logsnr | karras
    guidance_scale: float = 1.0  # the teacher's classifier-free guidance (as in generate-trajectories); 1 = none
    null_label: int | None = None  # guidance's "no class" label; default: the model's own null row (DiT)
    student: str = ""  # a student model.ckpt or folder; when set it is the generator, sampled in `steps` steps
    steps: int | None = None  # solver steps for a teacher (default 16); 1 or 2 for a student (default 1)
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    sigma_mid: float = 0.821  # a student's second-step noise level
    num_samples: int = 5000  # as configs/digits.toml's report and post-train's eval_samples: FD depends on it
    seed: int = 1  # not generate-trajectories' default 0, so a student is not scored on its training priors
    seeds: int | list = 1  # evaluation seeds: a count n (seed .. seed + n - 1) or a list [1, 2, 3]
    teacher_seeds: int | list | None = None  # pipeline only: the teacher-solve row's seeds; None = seeds (evaluation.md)
    class_labels: str = "random"  # random | an integer class (class-conditional generators)
    batch_size: int = 256
    store: str = ""  # a held-out trajectory store: paired error of the generator vs its stored solver samples
    store_samples: int = 256  # the store's last N samples, mid-train's held-out tail (its --holdout); 0 = all
    inception_weights: str = ""  # local FID Inception-v3 weights (pt_inception-2015-12-05 state dict)
    fid_reference: str = ""  # FID reference: .npz with mu/sigma or .npy images in [-1, 1]; digits by default
    vae: str = ""  # decode latent samples with this AutoencoderKL; default: the generator's recorded one or vae/
    gmm: str = ""  # gmm:<preset> ground truth for a student; a gmm:<preset> teacher is its own ground truth
    reference_steps: int = 1024  # steps of the float64 dpm3 solve that stands in for the exact flow map
    device: str = "auto"
    out: str = "runs/evaluate"  # folder: evaluation.json and samples.png


@dataclass
class TrainConfig:
    """The one training loop's settings, shared by every stage: each stage's config extends this class,
    so a stage's TOML table holds its own options and these side by side."""

    out: str = "runs/train"  # run folder: config.json, log.jsonl, checkpoints/, samples/, model.ckpt
    steps: int = 1000  # optimizer steps; the linear LR schedule ends at this step
    batch_size: int = 128  # global batch per optimizer step, split over processes and accumulation
    grad_accum: int = 1  # micro-batches per optimizer step on each process
    optimizer: str = "radam"  # adam | radam | adamw
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | linear (decays to 0 at `steps`)
    warmup_steps: int = 0  # linear LR warm-up from 0
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    ema_decay: float = 0.999  # per optimizer step
    ema_halflife: float = 0.0  # in samples; > 0 replaces ema_decay by 0.5 ** (batch_size / ema_halflife)
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0  # step k's noise and batch depend only on (seed, k), so resumed runs match uninterrupted ones
    log_every: int = 10
    checkpoint_every: int = 500  # steps between accelerate checkpoints (the last step is always saved)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    sample_every: int = 500  # steps between sample-grid PNGs; 0 = only at the end
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    device: str = "auto"  # auto (accelerate's choice, GPUs under `accelerate launch`) | cpu

    # Settings a resumed run may change: they do not alter the trained weights.
    runtime_only: ClassVar[tuple] = ("out", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                                     "tensorboard", "device")


@dataclass
class PretrainConfig(TrainConfig):
    """`cmt pretrain`: EDM diffusion pre-training of an EDM-preconditioned UNet2DModel teacher."""

    out: str = "runs/pretrain"
    steps: int = 2500  # defaults = the built-in digits teacher's recipe (configs/digits-pretrain.toml)
    lr: float = 5e-4
    lr_schedule: str = "linear"
    data: str = "digits"  # digits | gmm:<preset> | a folder of images | a .npy array
    gmm_samples: int = 8192  # training-set size drawn from a gmm:<preset>
    class_conditional: bool = False  # train with the dataset's labels (digits only)
    channels: list = dataclasses.field(default_factory=lambda: [48, 96])  # UNet block widths
    layers_per_block: int = 2
    attention: bool = False
    dropout: float = 0.0
    sigma_data: float = 0.5
    p_mean: float = -1.2  # training sigma ~ LogNormal(p_mean, p_std)
    p_std: float = 1.2
    sample_solver: str = "dpm3"  # sample grids: solver, steps and sigma grid
    sample_steps: int = 16
    sample_grid: str = "logsnr"
    num_grid_samples: int = 64
    export_dtype: str = "float32"  # weights dtype of the exported teacher folder (float16 halves its size)
    vae: str = ""  # an AutoencoderKL folder: train in its latent space (the images are encoded once)

    runtime_only: ClassVar[tuple] = TrainConfig.runtime_only + (
        "sample_solver", "sample_steps", "sample_grid", "num_grid_samples", "export_dtype")



@dataclass
class MidTrainConfig(TrainConfig):
    """`cmt mid-train`: regress a flow-map student onto stored teacher trajectories' endpoints (CMT)."""

    out: str = "runs/mid"
    data: str = ""  # a trajectory store made by `cmt generate-trajectories`
    holdout: int = 256  # last trajectories of the store kept for evaluation, never trained on
    flavour: str = "cm"  # cm (consistency flow map) | mf (MeanFlow average velocity)
    init: str = "teacher"  # teacher (its EDM network's weights) | random
    teacher: str = ""  # the network to start from; default: the teacher the store was generated with
    vae: str = ""  # decodes sample grids of a latent store; default: the VAE the store recorded
    batch_size: int = 8  # trajectories per optimizer step (x K points each for cm)
    lr_schedule: str = "linear"
    points_per_traj: int = 0  # cm: points drawn per trajectory per step; 0 = all K
    pairs_per_traj: int = 16  # mf: (t, r) pairs drawn per trajectory per step
    distance: str = "l2"  # cm: l2 | huber
    huber_c: float = 0.03
    sigma_min_shift: float = 0.003  # cm: the boundary f(x, s) = x holds at s = sigma_min_shift
    dropout: float = 0.0
    channels: list = dataclasses.field(default_factory=lambda: [48, 96])  # init=random without a network teacher
    layers_per_block: int = 2
    eval_every: int = 100  # steps between held-out 1-step errors (eval.jsonl); 0 = only at the end
    eval_samples: int = 256  # held-out trajectories used for that error
    num_grid_samples: int = 64

    runtime_only: ClassVar[tuple] = TrainConfig.runtime_only + ("eval_every", "eval_samples", "num_grid_samples",
                                                                "vae")


@dataclass
class PostTrainConfig(TrainConfig):
    """`cmt post-train`: ECT or MeanFlow post-training of a flow-map student, then its 1- and 2-step quality."""

    out: str = "runs/post"
    init: str = ""  # mid-training model.ckpt (CMT) | diffusion teacher (pretrain model.ckpt, folder, builtin) | random
    objective: str = "ect"  # ect (consistency student, from mid-cm) | meanflow (average velocity, from mid-mf)
    data: str = "digits"  # real data: digits | gmm:<preset> | a folder of images | a .npy array
    gmm_samples: int = 8192  # training-set size drawn from a gmm:<preset>
    arch: str = ""  # init=random: re-initialise this network's architecture (teacher spec or model.ckpt); "" = channels
    vae: str = ""  # latent students: the AutoencoderKL; default: the one recorded with --init (or --arch)
    channels: list = dataclasses.field(default_factory=lambda: [48, 96])  # init=random without --arch
    layers_per_block: int = 2
    dropout: float = 0.0
    sigma_min_shift: float = 0.003  # ect: the boundary f(x, s) = x of a student made from a diffusion/random net
    lr: float = 1e-4
    lr_schedule: str = "linear"
    p_mean: float | None = None  # noise levels ~ LogNormal(p_mean, p_std); unset: ECT -1.1/2.0, MeanFlow -0.4/1.0
    p_std: float | None = None
    q: float = 4096.0  # ect: r = t (1 - (1 + 8 sigmoid(-t)) / q); 4096 = the reference after CMT (CIFAR-10)
    q_double_every: int = 0  # ect: > 0 uses q^(stage + 1), stage = (step - 1) // this (vanilla ECT, q = 2); 0 = fixed q
    distance: str = "norm"  # ect: norm (the reference's: sqrt(sum sq + c^2) - c) | l2 (mean sq) | huber
    huber_c: float = 0.0  # ect: c of norm / huber; the reference's 0 makes norm the plain L2 norm
    edm_weighting: bool = False  # ect: extra weight (t^2 + sigma_data^2) / (t sigma_data)^2
    r_fraction: float = 0.25  # meanflow: share of samples with r != t
    adaptive_p: float = 1.0  # meanflow: loss L^2 / (L^2 + adaptive_c)^p, L = summed squared error (sony/mf-rae)
    adaptive_c: float = 1e-3
    sigma_max: float = 80.0  # sampling: x_T = sigma_max * noise
    sigma_mid: float = 0.821  # sampling: the 2-step re-noise level
    eval_every: int = 0  # steps between 1/2-step evaluations (eval.jsonl); 0 = only the init and the end
    eval_samples: int = 5000  # as cmt evaluate's num_samples: FD depends on it
    num_grid_samples: int = 64

    runtime_only: ClassVar[tuple] = TrainConfig.runtime_only + ("sigma_mid", "eval_every", "eval_samples",
                                                                "num_grid_samples")


def load_config(cls, path: str | Path | None = None, section: str | None = None, **overrides):
    """Build `cls` from defaults, then the TOML table `section` of `path`, then non-None overrides."""
    values = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CMTError(f"cannot read config {path}: {e}") from e
        values = data.get(section, {}) if section else data
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CMTError(f"unknown {cls.__name__} option(s) {unknown} in {path or 'overrides'}; "
                       f"known: {sorted(names)}")
    hints = get_type_hints(cls)
    wrong = [f"{k} = {v!r} ({why})" for k, v in values.items() if (why := type_error(v, hints[k]))]
    if wrong:
        raise CMTError(f"wrong type in {f'[{section}] of ' if section else ''}{path or 'overrides'}: "
                       f"{'; '.join(wrong)}")
    return cls(**values)


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def type_error(value, hint) -> str | None:
    """Why `value` does not fit the field annotation `hint` (None when it does), so that a TOML value of the
    wrong type is refused when the config is read, before any stage starts, instead of failing mid-run.
    bool is not an int here (TOML `true` for a step count is a mistake); an int is fine for a float."""
    allowed = getattr(hint, "__args__", None) or (hint,)  # `int | None` -> (int, NoneType)
    if isinstance(value, bool):  # bool subclasses int, so it is checked first
        fits = bool in allowed
    else:
        fits = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
    if fits:
        return None
    expected = " or ".join(TYPE_NAMES[t] for t in allowed if t is not type(None))
    return f"expected {expected}, got {TYPE_NAMES.get(type(value), type(value).__name__)}"


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
