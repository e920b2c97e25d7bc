"""Pre-training stage (`cmt pretrain`): an EDM-preconditioned UNet2DModel trained with the EDM loss on images
from datasets.py, by the shared loop. Writes run/model.ckpt (kind "pretrain") and run/teacher/, the EMA network
as a teacher folder for `cmt generate-trajectories --teacher run/teacher`.
With --vae the images are encoded to latents once, the teacher is trained on the latents, its sample grids are
decoded, and run/teacher/vae/ holds a copy of the VAE, so the folder is all a latent teacher's users need."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import PretrainConfig
from ..datasets import load_images
from ..latents import encode_images, load_vae
from ..models.io import export_denoiser
from ..objectives import EDMLoss
from ..solvers import get_solver, make_grid
from ..teachers.edm import EDMDenoiser, Precond, build_unet
from ..errors import CMTError
from ..seeding import seeded
from .data import TensorSource
from .lock import holds_run_folder
from .loop import SampleGrid, train


def build_teacher(cfg: PretrainConfig, shape, num_classes: int) -> EDMDenoiser:
    down = 2 ** (len(cfg.channels) - 1)
    if shape[1] % down or shape[2] % down:
        raise CMTError(f"images of size {shape[1]}x{shape[2]} do not halve {len(cfg.channels) - 1} times "
                       f"for channels {cfg.channels}; use fewer channel entries or other image sizes")
    try:
        unet = build_unet(shape, tuple(cfg.channels), cfg.layers_per_block, num_classes, cfg.dropout, cfg.attention)
    except ValueError as e:
        raise CMTError(f"cannot build a UNet with channels {cfg.channels}: {e}") from e
    return EDMDenoiser(unet, Precond(sigma_data=cfg.sigma_data, time_scale=cfg.time_scale, num_classes=num_classes))


def grid_sampler(cfg: PretrainConfig, shape, num_classes: int, vae=None):
    """sample_fn(denoiser) -> images: the teacher's ODE solve from fixed noise, so successive grids compare
    (decoded through `vae`, a LatentCodec, for a latent teacher)."""
    try:
        solver, sigmas = get_solver(cfg.sample_solver), make_grid(cfg.sample_grid, cfg.sample_steps)
    except ValueError as e:
        raise CMTError(f"sample grid settings: {e}") from e
    noise = torch.randn(cfg.num_grid_samples, *shape, generator=torch.Generator().manual_seed(cfg.seed))
    labels = torch.arange(cfg.num_grid_samples) % num_classes if num_classes else None

    def sample(denoiser):
        dev = next(denoiser.parameters()).device
        lab = labels.to(dev) if labels is not None else None
        x = solver(denoiser, noise.to(dev) * float(sigmas[0]), sigmas, lab)
        return x if vae is None else vae.to(dev).decode(x)

    return sample


@holds_run_folder
def pretrain(cfg: PretrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    from accelerate import PartialState

    data = load_images(cfg.data, cfg.gmm_samples, cfg.seed)
    if cfg.class_conditional and data.labels is None:
        raise CMTError(f"--class-conditional needs labelled data; {cfg.data} has no labels (digits does)")
    process = PartialState(cpu=cfg.device == "cpu")
    vae = load_vae(cfg.vae, "", process.device)
    if vae is not None:  # every process encodes the same images the same way (the mean, not a sample)
        data = encode_images(data, vae, progress=progress and process.is_main_process)
    num_classes = data.num_classes if cfg.class_conditional else 0
    with seeded(cfg.seed):  # the initial weights
        model = build_teacher(cfg, data.shape, num_classes)
    tensors = {"image": data.images, **({"labels": data.labels} if num_classes else {})}
    source = TensorSource(tensors, cfg.batch_size, cfg.seed)
    info = {**data.description, "fingerprint": source.fingerprint()}
    t0 = time.perf_counter()
    state = train(model, EDMLoss(cfg.p_mean, cfg.p_std, cfg.sigma_data), source, cfg, kind="pretrain",
                  data_info=info, resume=resume, progress=progress,
                  callbacks=[SampleGrid(grid_sampler(cfg, data.shape, num_classes, vae), cfg.sample_every)])
    run = Path(cfg.out)
    if state.accelerator.is_main_process:
        export_denoiser(state.ema, run / "teacher", cfg.export_dtype, vae=vae)
    state.accelerator.wait_for_everyone()
    return {"out": str(run), "step": state.step, "seconds": time.perf_counter() - t0,
            "loss": state.metrics.get("loss"), "checkpoint": str(run / "model.ckpt"),
            "teacher": str(run / "teacher"), "parameters": sum(p.numel() for p in model.parameters())}
