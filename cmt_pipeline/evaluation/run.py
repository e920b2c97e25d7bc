"""`evaluate(cfg)`: sample any generator from seeded noise and measure it with every metric that applies.

Which metrics run is decided by what is known: digits FD and KID for (1, 8, 8) samples, FID when Inception weights are
given, paired error when a store is given, exact-flow-map error and sliced W2 when the ground truth is a mixture.
A latent generator's samples are decoded by its VAE (latents.py) before the image metrics and the picture; the
paired error compares latents, as the store holds them. With several evaluation seeds (--seeds) every metric
is measured on each seed's samples and reported as mean and standard deviation, so a difference between two
generators can be told from the evaluation's own noise. Settings are chosen on CHOOSE_SEEDS and results reported on
REPORT_SEEDS (docs/evaluation.md), so a reported number was not tuned on its own noise. With cfg.cache an
evaluation whose generator and protocol were measured before is read from the user cache (cache.py).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import EvaluateConfig, to_dict
from ..constants import STEPS
from ..latents import load_vae
from ..plotting import save_image_grid, save_scatter
from ..priors import check_class_labels
from ..sampling import StudentSampler, TeacherSampler, load_student, sample, student_sigmas
from ..stores import open_store, read_head
from ..teachers import GMMDenoiser, load_teacher
from ..errors import CMTError
from ..files import atomic_write_bytes, atomic_write_json
from ..memory import check_memory
from ..devices import autocast_precision, full_fp32, resolve_device
from . import cache
from .features import DigitsFD, real_digits
from .frechet import feature_stats, frechet_distance
from .inception import inception_features, load_inception
from .metrics import check_store, gmm_metrics, memorisation, paired_error

RESULTS, SAMPLES_PNG = "evaluation.json", "samples.png"
# Evaluation seeds: every setting is chosen on the first set (post-training's in-training evaluation is its seed 1),
# every reported number is measured on the second, which no choice has seen.
CHOOSE_SEEDS, REPORT_SEEDS = [1, 2, 3], [101, 102, 103]


def build_sampler(cfg: EvaluateConfig, device):
    """The generator under test: the student at 1 or 2 steps when one is given, else the teacher + solver."""
    if cfg.student:
        steps = cfg.steps or 1
        if steps not in (1, 2):
            raise CMTError(f"a student is sampled in 1 or 2 steps; got --steps {steps}")
        return StudentSampler(load_student(cfg.student, device), student_sigmas(steps, cfg.sigma_max, cfg.sigma_mid))
    teacher = load_teacher(cfg.teacher, device, cfg.guidance_scale, cfg.null_label)
    try:
        return TeacherSampler(teacher, cfg.solver, cfg.steps or STEPS, cfg.grid, cfg.sigma_max, cfg.sigma_min)
    except ValueError as e:
        raise CMTError(f"bad solver settings: {e}") from e


def ground_truth(cfg: EvaluateConfig, shape) -> GMMDenoiser | None:
    spec = cfg.gmm or ("" if cfg.student or not cfg.teacher.startswith("gmm:") else cfg.teacher)
    if not spec:
        return None
    gmm = load_teacher(spec) if spec.startswith("gmm:") else None
    if not isinstance(gmm, GMMDenoiser):
        raise CMTError(f"--gmm {spec} is not a Gaussian-mixture preset; pass gmm:<preset>, e.g. gmm:gmm8x8")
    if tuple(gmm.shape) != tuple(shape):
        raise CMTError(f"--gmm {spec} has shape {gmm.shape} but the generator makes {tuple(shape)}")
    return gmm


def fid(cfg: EvaluateConfig, model, samples: torch.Tensor) -> float:
    """FID of the samples against --fid-reference (mu/sigma .npz or an .npy image array), or the real digits."""
    ref = cfg.fid_reference
    if ref.endswith(".npz"):
        stats = np.load(ref)
        if not {"mu", "sigma"} <= set(stats.files):
            raise CMTError(f"--fid-reference {ref} lacks mu/sigma arrays (pytorch-fid's --save-stats format)")
        ref_stats = stats["mu"], stats["sigma"]
    else:
        images = torch.from_numpy(np.load(ref) if ref else real_digits()[0]).float()
        ref_stats = feature_stats(inception_features(model, images, cfg.batch_size))
    return frechet_distance(*feature_stats(inception_features(model, samples, cfg.batch_size)), *ref_stats)


def check(cfg: EvaluateConfig, sampler, image_shape, seeds: list[int], plan: dict | None) -> None:
    """Every input problem surfaces here, before any sampling is spent (`plan`: cfg.store's, None without one)."""
    check_memory("--num-samples", cfg.num_samples, 3 * 4 * math.prod(image_shape), "its samples, priors and images")
    check_class_labels(cfg.class_labels, sampler.num_classes)
    if plan is not None:
        check_store(plan, sampler, cfg.store)
    if cfg.from_store:
        check_from_store(cfg, sampler, seeds, plan)
    ref = cfg.fid_reference
    if cfg.inception_weights and not (Path(ref).suffix in (".npz", ".npy") and Path(ref).is_file() if ref
                                      else image_shape == DigitsFD.shape):
        raise CMTError(f"FID needs reference statistics: pass --fid-reference as an existing .npz (mu, sigma) or "
                       f".npy of (N, C, H, W) images in [-1, 1] (got {ref or 'nothing'})")


def check_from_store(cfg: EvaluateConfig, sampler, seeds: list[int], plan: dict | None) -> None:
    """--from-store scores what generation solved, so the store must hold exactly what sampling would: this
    teacher's weights, solver and sigma grid, the same labels, from the evaluation's one seed, enough samples."""
    if cfg.student:
        raise CMTError("--from-store scores a teacher's samples that a trajectory store holds: pass the teacher "
                       "and --store, without --student")
    if plan is None:
        raise CMTError("--from-store needs --store: the trajectory store whose clean samples to score")
    made, fix = plan["config"], f"drop --from-store to solve them, or pass the settings {cfg.store} was made with"
    differs = [what for what, same in (
        ("teacher weights", plan["teacher"]["fingerprint"] == sampler.net.fingerprint()),
        ("solver", plan["solver"] == sampler.solver_name),
        ("sigma grid (--grid, --steps, --sigma-max, --sigma-min)",
         len(plan["sigmas"]) == len(sampler.sigmas)
         and np.allclose(plan["sigmas"], sampler.sigmas.double().numpy(), rtol=1e-9, atol=0)),
        ("--class-labels", made["class_labels"] == cfg.class_labels)) if not same]
    if differs:
        raise CMTError(f"--store {cfg.store} was not made by this generator ({', '.join(differs)} differ); {fix}")
    if seeds != [made["seed"]]:
        raise CMTError(f"--store {cfg.store} holds the samples of seed {made['seed']} only: pass --seed "
                       f"{made['seed']} and one seed (got {seeds})")
    if plan["num_samples"] < cfg.num_samples:
        raise CMTError(f"--store {cfg.store} holds {plan['num_samples']} samples, fewer than --num-samples "
                       f"{cfg.num_samples}; lower --num-samples or drop --from-store")


def stored_samples(cfg: EvaluateConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The store's first cfg.num_samples clean samples and their priors, as float32 (float16 stores round the
    samples to 11 significant bits: docs/evaluation.md says what that does to FD)."""
    data = read_head(cfg.store, cfg.num_samples)
    return torch.from_numpy(data["x0"].astype(np.float32)), torch.from_numpy(data["prior"].astype(np.float32))


def seed_list(seeds: int | list, seed: int) -> list[int]:
    """The evaluation seeds: a list of distinct integers as given, or a count n: seed .. seed + n - 1."""
    if isinstance(seeds, list):
        if not seeds or len(set(seeds)) != len(seeds) or not all(type(s) is int for s in seeds):
            raise CMTError(f"--seeds must list distinct integer seeds, got {seeds}")
        return seeds
    if seeds < 1:
        raise CMTError(f"--seeds as a count must be at least 1, got {seeds}")
    return list(range(seed, seed + seeds))


def summarise(runs: list[dict]) -> dict:
    """One metrics dict from per-seed ones: a value every seed gives alike (sample count, NFE, a seed-free
    error) as it is; any other number as the mean over seeds, with its sample standard deviation as <key>_std."""
    out = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs]
        if all(v == first for v in values) or not isinstance(first, (int, float)):
            out[key] = first
        else:
            out[key], out[f"{key}_std"] = float(np.mean(values)), float(np.std(values, ddof=1))
    return out


def with_spread(metrics: dict, key: str, fmt: str) -> str:
    """'mean ± std' when the metric varied over seeds, the value alone otherwise, '' when absent."""
    if metrics.get(key) is None:
        return ""
    std = metrics.get(f"{key}_std")
    return fmt.format(metrics[key]) + (f" ± {fmt.format(std)}" if std is not None else "")


@functools.cache
def digits_fd(device) -> DigitsFD:
    """One digits feature network per device: loading it and featurising the 1797 real digits costs 0.4 s on a CPU,
    paid once per process instead of per seed and row."""
    return DigitsFD(device)


def measure(cfg: EvaluateConfig, sampler, vae, gmm, inception, device, seed: int, progress: bool) -> dict:
    """Sample cfg.num_samples from `seed` and compute the applicable metrics: {metrics, x, images}."""
    t0 = time.perf_counter()
    if cfg.from_store:
        x, prior = stored_samples(cfg)
    else:
        x, prior, _, _ = sample(sampler, cfg.num_samples, seed, cfg.batch_size, device, cfg.class_labels, progress,
                                cfg.mixed_precision)
    metrics = {"num_samples": len(x), "nfe": sampler.nfe, "sample_seconds": time.perf_counter() - t0}
    if not torch.isfinite(x).all():
        raise CMTError("the generator produced non-finite samples (NaN/inf); a diverged training run (lower --lr, "
                       "--distance huber) or a --sigma-max the model was not made for")
    images = x if vae is None else vae.decode(x)
    if tuple(images.shape[1:]) == DigitsFD.shape:
        metrics.update(digits_fd(device).metrics(images, seed))
        metrics.update(memorisation(images))
    if inception is not None:
        metrics["fid"] = fid(cfg, inception, images)
    if cfg.store and not cfg.from_store:  # the store's own samples match themselves
        metrics.update(paired_error(sampler, cfg.store, cfg.store_samples, cfg.batch_size, device, seed, progress,
                                    cfg.mixed_precision))
    if gmm is not None:
        metrics.update(gmm_metrics(gmm, x, prior, sampler.renoise_steps == 0, sampler.sigma_max, cfg.sigma_min,
                                   cfg.reference_steps, seed, cfg.batch_size, device, progress))
    return {"metrics": metrics, "x": x, "images": images}


@full_fp32()
def evaluate(cfg: EvaluateConfig, progress: bool = True) -> dict:
    """Sample cfg.num_samples from the generator for each evaluation seed, compute the applicable metrics, write
    JSON (mean and std over seeds, and each seed's values) + PNG (the first seed's samples) to cfg.out; returns
    what the JSON holds plus `out` and the first seed's `samples` themselves (for further analysis), which an
    evaluation read from the cache (cfg.cache) does not have."""
    seeds = seed_list(cfg.seeds, cfg.seed)
    device = resolve_device(cfg.device)
    # the precision that runs, as recorded and keyed: bf16 asked for on a CPU without bf16 hardware runs in float32
    cfg = replace(cfg, mixed_precision=autocast_precision(cfg.mixed_precision, device, "samples"))
    sampler = build_sampler(cfg, device)
    vae = load_vae(cfg.vae, cfg.student or cfg.teacher, device, sampler.shape, "student" if cfg.student else "teacher")
    plan = open_store(cfg.store).plan if cfg.store else None
    check(cfg, sampler, sampler.shape if vae is None else vae.image_shape(sampler.shape), seeds, plan)
    out = Path(cfg.out)
    key = cache.cache_key(cache.key_parts(cfg, sampler, vae, seeds)) if cfg.cache else None
    hit = cache.lookup(key) if key else None
    if hit:
        result, png = hit
        out.mkdir(parents=True, exist_ok=True)
        if png is not None:
            atomic_write_bytes(out / SAMPLES_PNG, png)
        result = {**result, "config": to_dict(cfg), "cache": {"key": key, "reused": True}}
        atomic_write_json(out / RESULTS, result)
        return {**result, "out": str(out)}
    gmm = ground_truth(cfg, sampler.shape)
    inception = load_inception(cfg.inception_weights, device) if cfg.inception_weights else None
    first = measure(cfg, sampler, vae, gmm, inception, device, seeds[0], progress)  # its samples are kept
    runs = [first["metrics"]] + [measure(cfg, sampler, vae, gmm, inception, device, s, progress)["metrics"]
                                 for s in seeds[1:]]
    x, images = first["x"], first["images"]
    shape = tuple(images.shape[1:])
    out.mkdir(parents=True, exist_ok=True)
    if len(shape) == 3 and min(shape[1:]) >= 4 and shape[0] in (1, 3):
        save_image_grid(images[:100], out / SAMPLES_PNG)
    else:
        exact = gmm.sample(min(len(x), 2000), torch.Generator().manual_seed(seeds[0])) if gmm is not None else None
        save_scatter(x[:2000], out / SAMPLES_PNG, reference=exact, title=describe(sampler))
    per_seed = [{"seed": s, **{k: _json(v) for k, v in r.items()}} for s, r in zip(seeds, runs)]
    stored = f", read from the store ({plan['dtype']})" if cfg.from_store else ""
    result = {"generator": describe(sampler) + stored, "seeds": seeds,
              "metrics": {k: _json(v) for k, v in summarise(runs).items()},
              "per_seed": per_seed, "sampler": sampler.describe(),
              "vae": vae.describe(sampler.shape) if vae is not None else None,
              "config": to_dict(cfg), "cmt_version": __version__}
    if key:
        result["cache"] = {"key": key, "reused": False}
        cache.store(key, result, out / SAMPLES_PNG)
    atomic_write_json(out / RESULTS, result)
    return {**result, "out": str(out), "samples": images, **({"latents": x} if vae is not None else {})}


def describe(sampler) -> str:
    """One human line naming the generator, e.g. 'teacher dpm3 x 16 (logsnr), 16 NFE'."""
    d = sampler.describe()
    if d["kind"] == "teacher":
        guide = d["denoiser"].get("guidance")
        guided = f", guidance {guide['scale']:g} (2 passes per NFE)" if guide else ""
        return f"teacher {d['solver']} x {d['steps']} ({d['grid']}){guided}, {d['nfe']} NFE"
    return f"student {d['steps']}-step (sigmas {', '.join(f'{s:g}' for s in d['sigmas'])}), {d['nfe']} NFE"


def _json(v):
    """inf PSNR (a perfect match) is not valid JSON; write it as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v
