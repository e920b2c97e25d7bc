"""Pre-training stage (`cmt pretrain`): an EDM-preconditioned UNet2DModel trained with the EDM loss on images
from datasets.py, by the shared loop. Writes run/model.ckpt (kind "pretrain") and run/teacher/, the EMA network
as a teacher folder for `cmt generate-trajectories --teacher run/teacher`.
With --vae the images are encoded to latents once, the teacher is trained on the latents, its sample grids are
decoded, and run/teacher/vae/ holds a copy of the VAE, so the folder is all a latent teacher's users need."""

from __future__ import annotations

import time
from pathlib import Path


from ..config import PretrainConfig
from ..models.io import export_denoiser
from ..objectives import EDMLoss, from_config
from ..solvers import get_solver, make_grid
from ..errors import CMTError
from .lock import holds_run_folder
from .loop import SampleGrid, train
from .stage import fresh_network, grid_noise, image_source, process_of, training_images


def grid_sampler(cfg: PretrainConfig, shape, num_classes: int, vae=None):
    """sample_fn(denoiser) -> images: the teacher's ODE solve from fixed noise, so successive grids compare
    (decoded through `vae`, a LatentCodec, for a latent teacher)."""
    try:
        solver, sigmas = get_solver(cfg.sample_solver), make_grid(cfg.sample_grid, cfg.sample_steps)
    except ValueError as e:
        raise CMTError(f"sample grid settings: {e}") from e
    noise, labels = grid_noise(cfg.num_grid_samples, shape, num_classes, cfg.seed)

    def sample(denoiser):
        dev = next(denoiser.parameters()).device
        lab = labels.to(dev) if labels is not None else None
        x = solver(denoiser, noise.to(dev) * float(sigmas[0]), sigmas, lab)
        return x if vae is None else vae.to(dev).decode(x)

    return sample


@holds_run_folder
def pretrain(cfg: PretrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    process = process_of(cfg)
    data, vae = training_images(cfg, "", process.device, progress and process.is_main_process)
    if cfg.class_conditional and data.labels is None:
        raise CMTError(f"--class-conditional needs labelled data; {cfg.data} has no labels (digits does)")
    num_classes = data.num_classes if cfg.class_conditional else 0
    model = fresh_network(data.shape, cfg.seed, None, cfg.channels, cfg.layers_per_block, num_classes,
                          cfg.attention, cfg.dropout, cfg.sigma_data, cfg.time_scale)
    source, info = image_source(data, bool(num_classes), cfg)
    t0 = time.perf_counter()
    state = train(model, from_config(EDMLoss, cfg), source, cfg, kind="pretrain",
                  data_info=info, resume=resume, progress=progress,
                  callbacks=[SampleGrid(grid_sampler(cfg, data.shape, num_classes, vae), cfg.sample_every)])
    run = Path(cfg.out)
    if state.accelerator.is_main_process:
        export_denoiser(state.ema, run / "teacher", cfg.export_dtype, vae=vae)
    state.accelerator.wait_for_everyone()
    return {"out": str(run), "step": state.step, "seconds": time.perf_counter() - t0,
            "loss": state.metrics.get("loss"), "checkpoint": str(run / "model.ckpt"),
            "teacher": str(run / "teacher"), "parameters": sum(p.numel() for p in model.parameters())}
