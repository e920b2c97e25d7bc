"""Configuration: one dataclass per stage, loaded from a section of configs/*.toml, overridable from the CLI,
and written next to every output so each dataset and checkpoint says how it was made.

Each field is declared once, with `option()`: its default, help, choices and range. The click options of the
stage's command are generated from these fields (cli/options.py), and the choices and ranges are checked here
when a config is built, so the CLI, the TOML files, the checks and docs/cli.md cannot drift apart."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from typing import ClassVar, get_type_hints
from pathlib import Path

from .constants import GRID, SIGMA_DATA, SIGMA_MAX, SIGMA_MID, SIGMA_MIN, SIGMA_MIN_SHIFT, SOLVER, STEPS, TIME_SCALE
from .errors import CMTError, first_line

# choices shared by several stages; tests/test_config.py checks them against the library's own tables
SOLVERS = ("euler", "heun", "dpm2", "dpm3")
GRIDS = ("logsnr", "karras")
DISTANCES = ("norm", "l2", "huber")
POSITIVE = {"min": 0, "min_open": True}
NONNEGATIVE = {"min": 0}
DECAY = {"min": 0, "max": 1, "max_open": True}  # a rate in [0, 1): EMA, Adam's betas, dropout
MAX_SAMPLES = 2**31 - 1  # sample indices are int32-sized everywhere; a larger request is a typo, not a dataset
MAX_SOLVER_STEPS = 4096  # a store keeps every state: far past any published sampler (EDM: 18-256 steps)
MAX_REFERENCE_STEPS = 65536  # the exact-flow-map reference solve (1024 by default)


def option(default, help: str, *, choices: tuple = (), min=None, max=None, min_open: bool = False,
           max_open: bool = False, path: str = "", negative: str = "", toml_only: bool = False):
    """A config field and what the CLI and the checks need to know about it: choices, range ([min, max], an end
    left out when None, open with min_open/max_open), path ("folder", "existing folder", "any": the CLI's
    argument type), a bool's negative flag (default --no-NAME), and toml_only for a setting with no option (one
    that only `cmt pipeline` reads)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_open": min_open, "max_open": max_open,
            "path": path, "negative": negative, "toml_only": toml_only}
    meta = {k: v for k, v in meta.items() if v not in (None, (), "") and v is not False}  # keeps min=0
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def same_option(cls, name: str, default):
    """Field `name` of `cls` (help, choices, range) with another default: a stage's own recipe."""
    return option(default, **cls.__dataclass_fields__[name].metadata)


def range_text(meta) -> str:
    """A field's range in words, for its error message: 'positive', '>= 0', 'in [0, 1)'."""
    lo, hi, lo_open, hi_open = (meta.get(k) for k in ("min", "max", "min_open", "max_open"))
    if lo is None and hi is None:
        return "finite"
    if lo == 0 and lo_open:
        return "positive" + (f" and {'<' if hi_open else '<='} {hi}" if hi is not None else "")
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def option_error(f: dataclasses.Field, value) -> str | None:
    """Why `value` is outside field `f`'s choices or range (None when it is not). Every number must be finite; a
    list must not be empty, and its elements are held to the field's range."""
    meta, name = f.metadata, "--" + f.name.replace("_", "-")
    if value is None or isinstance(value, (str, bool)):
        return f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}" \
            if meta.get("choices") and value not in meta["choices"] else None
    if isinstance(value, list):
        return f"{name} must not be empty" if not value else next(
            (f"every value of {name} must be {range_text(meta)}, got {value}" for v in value if out_of_range(meta, v)),
            None)
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    return f"{name} must be {range_text(meta)}, got {value}" if out_of_range(meta, value) else None


def out_of_range(meta, value) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return True
    return (lo is not None and (value <= lo if meta.get("min_open") else value < lo)) or \
        (hi is not None and (value >= hi if meta.get("max_open") else value > hi))


class Checked:
    """Base of the stage configs: a config is checked against its fields' choices and ranges when it is built,
    whether from a TOML file, the CLI or code, so every caller gets the same one-line error before any work."""

    def __post_init__(self):
        for f in fields(self):
            if error := option_error(f, getattr(self, f.name)):
                raise CMTError(error)


@dataclass
class GenerateConfig(Checked):
    """`cmt generate-trajectories`: the teacher's ODE solve from seeded prior noise, stored as shards."""

    teacher: str = option("builtin", "Teacher: a model folder (project EDM format or diffusers unet/+scheduler/), "
                          "an NVlabs EDM/EDM2 .pkl snapshot (read as data), a DiT-*.pt / SiT-*.pt checkpoint, "
                          "gmm:gmm2d, gmm:gmm8x8, or builtin (the shipped digits teacher).")
    out: str = option("runs/trajectories", "Output folder.", path="folder")
    num_samples: int = option(1024, "Number of trajectories N.", **POSITIVE, max=MAX_SAMPLES)
    solver: str = option(SOLVER, "ODE solver.", choices=SOLVERS)
    steps: int = option(STEPS, "Solver steps K; each sample stores K states.", **POSITIVE, max=MAX_SOLVER_STEPS)
    grid: str = option(GRID, "Sigma grid (logsnr: the paper's).", choices=GRIDS)
    sigma_max: float = option(SIGMA_MAX, "x_T = sigma_max * noise.", **POSITIVE)
    sigma_min: float = option(SIGMA_MIN, "The solve's last sigma.", **POSITIVE)
    format: str = option("zarr", "Store format.", choices=("zarr", "wds"))
    dtype: str = option("float16", "Storage dtype of traj/x0 (the prior is always float32).",
                        choices=("float16", "float32"))
    batch_size: int = option(256, "Samples per teacher batch (never crosses a shard).", **POSITIVE)
    shard_size: int = option(1024, "Samples per shard, the unit of work and of resumption (at most N).", **POSITIVE)
    seed: int = option(0, "Sample i's noise and label depend only on (seed, i).", **NONNEGATIVE)
    class_labels: str = option("random", "random, none, or one class index for all samples.")
    guidance_scale: float = option(1.0, "Classifier-free guidance scale w of a class-conditional teacher: "
                                   "D = D(null) + w (D(label) - D(null)); 1 = no guidance.")
    null_label: int | None = option(None, "Guidance's 'no class' label.  [default: the model's own null row (DiT); "
                                    "others must name it]", **NONNEGATIVE)
    vae: str = option("", "Latent teacher: the diffusers AutoencoderKL folder its latents belong to; recorded, so "
                      "later stages decode.  [default: the teacher folder's vae/ if it has one, else none (pixel "
                      "space)]", path="folder")
    device: str = option("auto", "auto, cpu, cuda or cuda:N (LOCAL_RANK picks the GPU under launchers).")
    cuda_graphs: bool = option(False, "Replay the teacher's forward as a CUDA graph (a small network's kernels "
                               "launched at once); the first batch is checked bit for bit against the eager "
                               "forward, which the run falls back to if they differ. CUDA only.")

    def __post_init__(self):
        super().__post_init__()
        self.shard_size = min(self.shard_size, self.num_samples)  # one shard holds the whole dataset at most


@dataclass
class EvaluateConfig(Checked):
    """`cmt evaluate`: sample a generator (a teacher with a solver, or a student at 1 or 2 steps) and measure it."""

    teacher: str = option("builtin", "Generator when no --student: a model folder, an NVlabs .pkl snapshot, gmm:gmm2d, "
                          "gmm:gmm8x8 or builtin.")
    solver: str = option(SOLVER, "The teacher's solver.", choices=SOLVERS)
    grid: str = option(GRID, "The teacher's sigma grid.", choices=GRIDS)
    guidance_scale: float = option(1.0, "The teacher's classifier-free guidance scale (a class-conditional "
                                   "teacher; as in generate-trajectories); 1 = none.")
    null_label: int | None = option(None, "Guidance's 'no class' label.  [default: the model's own null row (DiT)]",
                                    **NONNEGATIVE)
    student: str = option("", "A student model.ckpt (mid-/post-training, either flavour), a folder written by cmt "
                          "export, or a student folder (project EDM format); evaluated at --steps 1 or 2 instead of "
                          "the teacher.")
    steps: int | None = option(None, "Solver steps for a teacher [default: 16]; 1 or 2 for a student "
                               "[default: 1].", **POSITIVE, max=MAX_SOLVER_STEPS)
    sigma_max: float = option(SIGMA_MAX, "x_T = sigma_max * noise.", **POSITIVE)
    sigma_min: float = option(SIGMA_MIN, "The teacher solve's last sigma.", **POSITIVE)
    sigma_mid: float = option(SIGMA_MID, "A 2-step student's intermediate sigma.", **POSITIVE)
    # as configs/digits.toml's report and post-train's eval_samples: FD depends on it
    num_samples: int = option(5000, "Generated samples.", min=2, max=MAX_SAMPLES)
    # not generate-trajectories' default 0, so a student is not scored on its training priors
    seed: int = option(1, "Sample i's noise depends only on (seed, i).", **NONNEGATIVE)
    seeds: int | list = option(1, "Evaluation seeds, e.g. 1,2,3, or a count N (--seed .. --seed + N - 1): each metric "
                               "as mean ± std over them, each seed's values in evaluation.json.", **NONNEGATIVE)
    # see docs/evaluation.md
    teacher_seeds: int | list | None = option(None, "The pipeline's teacher rows' seeds; None = seeds.",
                                              toml_only=True, **NONNEGATIVE)
    # the report's reference: EDM's sampler, the best the digits teacher measured (docs/results.md)
    teacher_best_solver: str = option("heun", "The solver of the pipeline's teacher-best row.", choices=SOLVERS,
                                      toml_only=True)
    teacher_best_grid: str = option("karras", "The sigma grid of the teacher-best row.", choices=GRIDS,
                                    toml_only=True)
    teacher_best_steps: int = option(18, "The solver steps of the teacher-best row.", **POSITIVE,
                                     max=MAX_SOLVER_STEPS, toml_only=True)
    # off: a diagnostic (the digits teacher's 1-step map reads FD ~876) that costs as much as two student rows
    teacher_maps: bool = option(False, "The pipeline also scores the teacher's network as a 1- and 2-step map "
                                "(what mid-training starts from).", toml_only=True)
    class_labels: str = option("random", "random, or one class index for all samples (conditional generators).")
    batch_size: int = option(256, "Samples per batch.", **POSITIVE)
    # bf16 moved digits FD by at most 0.13 (1%), far inside the seed spread (docs/evaluation.md, "Precision")
    mixed_precision: str = option("no", "The generator's network under autocast: no (float32) or bf16 (1.6-1.8x "
                                  "faster on a CPU with bf16 hardware; the solver's arithmetic stays float32).",
                                  choices=("no", "bf16"))
    store: str = option("", "Trajectory store (a folder or an s3:// URL): paired MSE/PSNR of the generator vs the "
                        "stored solver samples.", path="any")
    store_samples: int = option(256, "Use the store's last N samples, where `cmt mid-train --holdout` keeps its "
                                "held-out trajectories (0 = all).", **NONNEGATIVE)
    from_store: bool = option(False, "Score the teacher's samples that --store already holds (its first "
                              "--num-samples clean samples, solved from the store's seed: pass --seed SEED) instead "
                              "of solving them again; the store must be this teacher's, solver's and grid's.")
    # generation already solved these samples, so the row costs no teacher forward (docs/evaluation.md)
    teacher_from_store: bool = option(False, "The pipeline's `teacher` row reads the store's samples "
                                      "(--from-store) instead of solving them again.", toml_only=True)
    inception_weights: str = option("", "Local FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth); "
                                    "enables FID. Never downloaded.")
    fid_reference: str = option("", "FID reference: .npz with mu/sigma, or .npy images (N, C, H, W) in [-1, 1].  "
                                "[default: the real digits, for 8x8 generators]")
    vae: str = option("", "Latent generator: the AutoencoderKL that decodes its samples for the image metrics and "
                      "picture.  [default: the one it recorded, or its folder's vae/]", path="folder")
    gmm: str = option("", "gmm:<preset> ground truth for a student (a gmm: teacher is its own).")
    reference_steps: int = option(1024, "Steps of the float64 dpm3 solve used as the exact flow map.", **POSITIVE,
                                  max=MAX_REFERENCE_STEPS)
    cache: bool = option(False, "Reuse this evaluation from the user cache ($CMT_CACHE, default ~/.cache/cmt) when "
                         "the generator's weights and the protocol are unchanged; store it there otherwise.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    out: str = option("runs/evaluate", "Folder for evaluation.json and samples.png.", path="folder")


@dataclass
class TrainConfig(Checked):
    """The one training loop's settings, shared by every stage: each stage's config extends this class,
    so a stage's TOML table holds its own options and these side by side."""

    out: str = option("runs/train", "Run folder (config, log, checkpoints, samples).", path="folder")
    steps: int = option(1000, "Optimizer steps (the linear LR schedule ends here).", **POSITIVE)
    batch_size: int = option(128, "Global batch per step, split over processes and --grad-accum.", **POSITIVE)
    grad_accum: int = option(1, "Micro-batches per step on each process.", **POSITIVE)
    optimizer: str = option("radam", "The optimizer.", choices=("adam", "radam", "adamw"))
    lr: float = option(2e-4, "Peak learning rate.", **POSITIVE)
    beta1: float = option(0.9, "The optimizer's first moment decay.", **DECAY)
    beta2: float = option(0.999, "The optimizer's second moment decay.", **DECAY)
    weight_decay: float = option(0.0, "Weight decay.", **NONNEGATIVE)
    lr_schedule: str = option("constant", "linear decays to 0 at --steps.", choices=("constant", "linear"))
    warmup_steps: int = option(0, "Linear LR warm-up steps.", **NONNEGATIVE)
    grad_clip: float = option(0.0, "Max global gradient norm; 0 = off.", **NONNEGATIVE)
    ema_decay: float = option(0.999, "EMA decay per step.", **DECAY)
    ema_halflife: float = option(0.0, "EMA half-life in samples; > 0 replaces --ema-decay.", **NONNEGATIVE)
    ema_rampup: float = option(0.0, "EDM's EMA ramp-up ratio (EDM uses 0.05): the half-life at step k is min("
                               "--ema-halflife, samples seen before step k x this); 0 = off. Needs --ema-halflife.",
                               **NONNEGATIVE)
    mixed_precision: str = option("no", "accelerate's mixed precision.", choices=("no", "fp16", "bf16"))
    # resumed runs match uninterrupted ones because of this
    seed: int = option(0, "Step k's batch and noise depend only on (seed, k).", **NONNEGATIVE)
    log_every: int = option(10, "Steps between log lines (log.jsonl, TensorBoard, progress bar).", **POSITIVE)
    checkpoint_every: int = option(500, "Steps between resumable checkpoints (the last step is always saved).",
                                   **POSITIVE)
    keep_checkpoints: int = option(2, "Newest checkpoints kept; 0 = all.", **NONNEGATIVE)
    sample_every: int = option(500, "Steps between sample-grid PNGs; 0 = only at the end.", **NONNEGATIVE)
    tensorboard: bool = option(True, "Also log to TensorBoard if installed.")
    device: str = option("auto", "auto: accelerate's device (GPUs under `accelerate launch`); cpu forces CPU.",
                         choices=("auto", "cpu"))

    # Settings a resumed run may change: they do not alter the trained weights.
    runtime_only: ClassVar[tuple] = ("out", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                                     "tensorboard", "device")

    def __post_init__(self):
        super().__post_init__()
        if self.ema_rampup > 0 and not self.ema_halflife > 0:
            raise CMTError("--ema-rampup ramps the EMA half-life up to --ema-halflife, which is not set; "
                           "pass --ema-halflife SAMPLES or leave --ema-rampup at 0")


@dataclass
class PretrainConfig(TrainConfig):
    """`cmt pretrain`: EDM diffusion pre-training of an EDM-preconditioned UNet2DModel teacher."""

    out: str = same_option(TrainConfig, "out", "runs/pretrain")
    # defaults = the built-in digits teacher's recipe (configs/digits-pretrain.toml)
    steps: int = same_option(TrainConfig, "steps", 2500)
    lr: float = same_option(TrainConfig, "lr", 5e-4)
    lr_schedule: str = same_option(TrainConfig, "lr_schedule", "linear")
    data: str = option("digits", "digits, gmm:gmm8x8, a folder of images, or a .npy array (see docs/training.md).")
    gmm_samples: int = option(8192, "Training-set size drawn from a gmm:<preset>.", **POSITIVE,
                              max=MAX_SAMPLES)
    class_conditional: bool = option(False, "Train with the labels (digits only).", negative="--unconditional")
    channels: list = option([48, 96], "UNet block widths, comma-separated, e.g. 48,96.", **POSITIVE)
    layers_per_block: int = option(2, "ResNet layers per UNet block.", **POSITIVE)
    attention: bool = option(False, "Self-attention in the lowest-resolution block.")
    dropout: float = option(0.0, "Dropout of the UNet.", **DECAY)
    sigma_data: float = option(SIGMA_DATA, "The data's standard deviation (EDM preconditioning).", **POSITIVE)
    time_scale: float = option(TIME_SCALE, "The UNet's timestep input is time_scale * log(sigma)/4: 1000 spans diffusers' "
                               "timestep range (the built-in teacher), 1 is EDM's and smooth in sigma.", **POSITIVE)
    p_mean: float = option(-1.2, "Training sigma ~ LogNormal(p_mean, p_std).")
    p_std: float = option(1.2, "See --p-mean.", **POSITIVE)
    sample_solver: str = option(SOLVER, "Solver of the sample grids.", choices=SOLVERS)
    sample_steps: int = option(16, "Solver steps of the sample grids.", **POSITIVE, max=MAX_SOLVER_STEPS)
    sample_grid: str = option(GRID, "Sigma grid of the sample grids.", choices=GRIDS)
    num_grid_samples: int = option(64, "Samples in each sample grid.", **POSITIVE, max=4096)
    export_dtype: str = option("float32", "Weights dtype of the exported teacher folder (float16 halves its size).",
                               choices=("float32", "float16"))
    vae: str = option("", "A diffusers AutoencoderKL folder: encode the images to its latents once and train the "
                      "teacher on them; OUT/teacher/vae/ gets a copy.", path="folder")

    runtime_only: ClassVar[tuple] = TrainConfig.runtime_only + (
        "sample_solver", "sample_steps", "sample_grid", "num_grid_samples", "export_dtype")


@dataclass
class MidTrainConfig(TrainConfig):
    """`cmt mid-train`: regress a flow-map student onto stored teacher trajectories' endpoints (CMT)."""

    out: str = same_option(TrainConfig, "out", "runs/mid")
    data: str = option("", "Trajectory store from `cmt generate-trajectories` (Zarr or WebDataset).", path="any")
    holdout: int = option(256, "Last N trajectories kept out of training for evaluation.", **NONNEGATIVE)
    flavour: str = option("cm", "cm: consistency flow map; mf: MeanFlow average velocity.", choices=("cm", "mf"))
    init: str = option("teacher", "Start from the teacher's weights or at random.", choices=("teacher", "random"))
    teacher: str = option("", "Network to start from (default: the store's teacher).")
    vae: str = option("", "AutoencoderKL that decodes a latent store's sample grids.  [default: the VAE the store "
                      "recorded]", path="folder")
    # trajectories per optimizer step (x K points each for cm)
    batch_size: int = same_option(TrainConfig, "batch_size", 8)
    lr_schedule: str = same_option(TrainConfig, "lr_schedule", "linear")
    points_per_traj: int = option(0, "cm: points drawn per trajectory per step (0 = all K).", **NONNEGATIVE)
    pairs_per_traj: int = option(16, "mf: (t, r) pairs drawn per trajectory per step.", **POSITIVE)
    distance: str = option("l2", "cm: regression distance (mf: l2 only): l2 = mean sq, huber = sqrt(mean sq + "
                           "c^2) - c, lpips = LPIPS v0.1 vgg (the paper's; needs --lpips-vgg and --lpips-heads).",
                           choices=("l2", "huber", "lpips"))
    huber_c: float = option(0.03, "Pseudo-Huber constant (data units).", **NONNEGATIVE)
    off_grid: float = option(0.0, "Share of points (mf: of the pairs' sources) moved to a random sigma between two "
                             "grid sigmas (state by a DDIM step onto the next stored state), so the student is smooth "
                             "in sigma between them.", min=0, max=1)
    lpips_vgg: str = option("", "--distance lpips: local torchvision VGG16 weights (vgg16-397923af.pth). Never "
                            "downloaded.")
    lpips_heads: str = option("", "--distance lpips: local LPIPS v0.1 vgg heads (vgg.pth of "
                              "richzhang/PerceptualSimilarity). Never downloaded.")
    # 16 = objectives/lpips.py's MIN_SIZE (tests/test_lpips.py checks): relu5_3 follows four max-pools
    lpips_size: int = option(224, "--distance lpips: images are resized bilinearly to this side first.", min=16)
    sigma_min_shift: float = option(SIGMA_MIN_SHIFT, "cm: boundary sigma where f(x, s) = x.", **POSITIVE)
    dropout: float = option(0.0, "Dropout of the student.", **DECAY)
    channels: list = option([48, 96], "UNet widths for --init random without a network teacher.", **POSITIVE)
    layers_per_block: int = option(2, "ResNet layers per UNet block (--init random without a network teacher).",
                                   **POSITIVE)
    time_scale: float | None = option(None, "Timestep scale of that UNet (see cmt pretrain --time-scale); a student "
                                      "copied or rebuilt from a network teacher keeps the teacher's.  [default: 1000]",
                                      **POSITIVE)
    eval_every: int = option(100, "Steps between held-out 1-step errors (eval.jsonl); 0 = only at the end.",
                             **NONNEGATIVE)
    eval_samples: int = option(256, "Held-out trajectories used for that error.", **POSITIVE)
    num_grid_samples: int = option(64, "Samples in each sample grid.", **POSITIVE, max=4096)

    runtime_only: ClassVar[tuple] = TrainConfig.runtime_only + ("eval_every", "eval_samples", "num_grid_samples",
                                                                "vae")

    def __post_init__(self):
        super().__post_init__()
        if self.flavour == "mf" and self.distance != "l2":
            raise CMTError(f"--distance {self.distance} is for --flavour cm (mf regresses velocities with a mean "
                           "squared error); use --distance l2 with --flavour mf")
        if self.distance == "lpips":
            unset = [o for o, v in (("--lpips-vgg", self.lpips_vgg), ("--lpips-heads", self.lpips_heads)) if not v]
            if unset:
                raise CMTError(f"--distance lpips needs {' and '.join(unset)}: local weight files, never downloaded "
                               "(vgg16-397923af.pth from torchvision, vgg.pth v0.1 from richzhang/"
                               "PerceptualSimilarity; see docs/training.md)")


@dataclass
class PostTrainConfig(TrainConfig):
    """`cmt post-train`: ECT or MeanFlow post-training of a flow-map student, then its 1- and 2-step quality."""

    out: str = same_option(TrainConfig, "out", "runs/post")
    init: str = option("", "mid-training model.ckpt (CMT: mid-cm for ect, mid-mf for meanflow), a diffusion "
                       "teacher (pretrain model.ckpt, teacher folder or builtin), or random.")
    objective: str = option("ect", "Post-training objective: ect (a consistency student, from mid-cm) or meanflow "
                            "(average velocity, from mid-mf).", choices=("ect", "meanflow"))
    data: str = option("digits", "Real data: digits, gmm:gmm8x8, a folder of images or a .npy array.")
    gmm_samples: int = option(8192, "Training-set size drawn from a gmm:<preset>.", **POSITIVE,
                              max=MAX_SAMPLES)
    arch: str = option("", "--init random: re-initialise this network's architecture (teacher spec or "
                       "model.ckpt); without it --channels/--layers-per-block.")
    vae: str = option("", "Latent student: the AutoencoderKL folder; --data is encoded to its latents once, samples "
                      "are decoded.  [default: the VAE recorded with --init / --arch]", path="folder")
    channels: list = option([48, 96], "UNet widths for --init random without --arch, e.g. 48,96.", **POSITIVE)
    layers_per_block: int = option(2, "ResNet layers per UNet block (--init random without --arch).", **POSITIVE)
    time_scale: float | None = option(None, "Timestep scale of that UNet (see cmt pretrain --time-scale); a network "
                                      "from --init or --arch keeps its own.  [default: 1000]", **POSITIVE)
    dropout: float = option(0.0, "Dropout of the student (the same masks for prediction and target).", **DECAY)
    sigma_min_shift: float = option(SIGMA_MIN_SHIFT, "ect: boundary sigma of a student made from a diffusion/random "
                                    "net.", **POSITIVE)
    lr: float = same_option(TrainConfig, "lr", 1e-4)
    lr_schedule: str = same_option(TrainConfig, "lr_schedule", "linear")
    p_mean: float | None = option(None, "Noise levels ~ LogNormal(p_mean, p_std).  [default: ect -1.1, meanflow "
                                  "-0.4]")
    p_std: float | None = option(None, "See --p-mean.  [default: ect 2.0, meanflow 1.0]", **POSITIVE)
    # 4096 = the reference after CMT (CIFAR-10)
    q: float = option(4096.0, "ect: r = t (1 - (1 + 8 sigmoid(-t)) / q).", **POSITIVE)
    q_double_every: int = option(0, "ect: q^(stage + 1) with a new stage every N steps (0 = fixed q).", min=0)
    distance: str = option("norm", "ect: distance between prediction and target: norm = sqrt(sum sq + c^2) - c (the "
                           "reference's), l2 = mean sq, huber = sqrt(mean sq + c^2) - c.", choices=DISTANCES)
    # the reference's 0 makes norm the plain L2 norm
    huber_c: float = option(0.0, "ect: c of --distance norm / huber.", **NONNEGATIVE)
    edm_weighting: bool = option(False, "ect: extra weight (t^2 + sigma_data^2) / (t sigma_data)^2.")
    r_fraction: float = option(0.25, "meanflow: share of samples with r != t.", min=0, max=1)
    adaptive_p: float = option(1.0, "meanflow: adaptive weight 1 / (L^2 + c)^p, L the summed squared error.",
                               **NONNEGATIVE)
    adaptive_c: float = option(1e-3, "meanflow: the c of --adaptive-p.", **POSITIVE)
    sigma_max: float = option(SIGMA_MAX, "Sampling: x_T = sigma_max * noise.", **POSITIVE)
    sigma_mid: float = option(SIGMA_MID, "Sampling: 2-step re-noise level.", **POSITIVE)
    eval_every: int = option(0, "Steps between 1/2-step evaluations (eval.jsonl); 0 = init and end.", **NONNEGATIVE)
    # as cmt evaluate's num_samples: FD depends on it
    eval_samples: int = option(5000, "Samples per evaluation.", min=2, max=MAX_SAMPLES)
    num_grid_samples: int = option(64, "Samples in each sample grid.", **POSITIVE, max=4096)
    keep_best: bool = option(False, "At every evaluation (--eval-every), keep the EMA weights with the lowest "
                             "held-out FD so far at 1 and at 2 steps as run/best-1step.ckpt and best-2step.ckpt.")

    runtime_only: ClassVar[tuple] = TrainConfig.runtime_only + ("sigma_mid", "eval_every", "eval_samples",
                                                                "num_grid_samples", "keep_best")


# every table a config file may hold: each stage's own, and [pipeline] (cmt pipeline's wiring)
TABLES = ("pipeline", "pretrain", "generate", "mid_train", "post_train", "evaluate")
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; this bounds what a wrong path (a device, a dataset) can cost


def read_toml(path) -> dict:
    """The tables of a config file; CMTError for anything that is not a small TOML file whose tables are all known
    (a misspelled [generat] would otherwise run on defaults)."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            raise CMTError(f"config {path} is not a TOML file of at most {MAX_CONFIG_BYTES >> 20} MiB; "
                           "pass one of configs/*.toml or your own copy")
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError) as e:  # TOMLDecodeError, and UnicodeDecodeError for a binary file
        raise CMTError(f"cannot read config {path}: {first_line(e)}") from e
    except RecursionError as e:  # tomllib recurses into nested arrays and tables
        raise CMTError(f"cannot read config {path}: nested too deeply") from e
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise CMTError(f"{path}: unknown table(s) {unknown}; a config file has tables among {list(TABLES)}")
    return data


def load_config(cls, path: str | Path | None = None, section: str | None = None, **overrides):
    """Build `cls` from defaults, then the TOML table `section` of `path`, then non-None overrides."""
    values = {}
    if path is not None:
        data = read_toml(path)
        values = dict(data.get(section, {})) if section else data
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
