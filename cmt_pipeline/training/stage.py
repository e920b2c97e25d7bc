"""What every training stage sets up the same way, written once: the process (device and rank), the training
images (encoded once where a VAE is given), a fresh network, the dropout a stage trains with, and the fixed noise
of its sample grids, and what a run records of the network it trains. pretrain.py, midtrain.py and posttrain.py keep only their recipe: data, loss, student,
callbacks; the run folder's lock is holds_run_folder (lock.py), the loop is train (loop.py)."""

from __future__ import annotations

import dataclasses

import torch

from ..datasets import ImageData, load_images
from ..latents import encode_images, load_vae
from ..models.io import build_network
from ..teachers.edm import EDMDenoiser, Precond, build_unet, check_widths
from ..errors import CMTError
from ..seeding import seeded
from .data import TensorSource


def process_of(cfg):
    """This process's accelerate state (device, rank), before the loop starts: what runs on the main process only
    and where the data is encoded."""
    from accelerate import PartialState

    return PartialState(cpu=cfg.device == "cpu")


def training_images(cfg, vae_spec: str, device, progress: bool, record: dict | None = None):
    """(images, vae): cfg.data loaded, then encoded once to latents by the VAE of --vae or of `vae_spec` (the
    network it belongs to; `record`, its checkpoint if the caller has read it already), the mean and not a sample,
    so every process encodes the same images the same way."""
    data = load_images(cfg.data, cfg.gmm_samples, cfg.seed)
    vae = load_vae(cfg.vae, vae_spec, device, record=record)
    if vae is not None:
        if cfg.data.startswith("gmm:"):
            raise CMTError(f"--data {cfg.data} is measured against its exact mixture in its own space; a latent "
                           "network (with a VAE) needs image data: digits, an image folder or a .npy array")
        data = encode_images(data, vae, progress=progress)
    return data, vae


def image_source(data: ImageData, with_labels: bool, cfg, **info) -> tuple[TensorSource, dict]:
    """The loop's data source over the images (and their labels for a class-conditional network) and the record
    that checkpoints keep of it: the dataset's description and the fingerprint a resume checks."""
    tensors = {"image": data.images, **({"labels": data.labels} if with_labels else {})}
    source = TensorSource(tensors, cfg.batch_size, cfg.seed)
    return source, {**data.description, "fingerprint": source.fingerprint(), **info}


def fresh_network(shape, seed: int, spec: dict | None = None, channels=(48, 96), layers_per_block: int = 2,
                  num_classes: int = 0, attention: bool = False, dropout: float = 0.0, sigma_data: float = Precond.sigma_data,
                  time_scale: float | None = None) -> torch.nn.Module:
    """Fresh weights drawn from `seed` alone: the architecture `spec` (models.io.network_spec of a network made
    elsewhere), else the project's UNet of `channels` with EDM preconditioning (`dropout` is recorded in the
    UNet's config; set_dropout changes the rate a stage trains with without touching the record)."""
    if spec:
        with seeded(seed):
            return build_network(spec)
    check_widths(channels)  # first: a width that cannot be built is the mistake to name
    down = 2 ** (len(channels) - 1)
    if shape[1] % down or shape[2] % down:
        raise CMTError(f"images of size {shape[1]}x{shape[2]} do not halve {len(channels) - 1} times "
                       f"for channels {list(channels)}; use fewer channel entries or other image sizes")
    with seeded(seed):
        try:
            unet = build_unet(shape, tuple(channels), layers_per_block, num_classes, dropout, attention)
        except ValueError as e:
            raise CMTError(f"cannot build a UNet with channels {list(channels)}: {e}") from e
    return EDMDenoiser(unet, Precond(sigma_data=sigma_data, time_scale=time_scale or Precond.time_scale,
                                     num_classes=num_classes))


def set_dropout(net: torch.nn.Module, p: float, label_dropout: float | None = None) -> None:
    """Every dropout layer's rate to the stage's `p`; with `label_dropout`, the class-label dropout of DiT and of
    the native EDM networks too (mid-training sets it to 0: a dropped label would pair the unconditional input with
    a conditional target)."""
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        if label_dropout is not None and hasattr(m, "embedding_table") and hasattr(m, "dropout_prob"):
            m.dropout_prob = label_dropout
        if label_dropout is not None and hasattr(m, "label_dropout"):
            m.label_dropout = label_dropout


def grid_noise(num: int, shape, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixed noise and labels of a stage's sample grids, so successive grids compare."""
    noise = torch.randn(num, *shape, generator=torch.Generator().manual_seed(seed))
    return noise, torch.arange(num) % num_classes if num_classes else None


def with_time_scale(cfg, net: torch.nn.Module, origin: str):
    """cfg with time_scale set to what `net`'s UNet receives, so the recorded config says how the student was made
    (None for a network without EDM's timestep input). --time-scale only shapes a fresh UNet: asking a network
    made elsewhere (`origin`, for the message) for another scale is refused, not silently ignored."""
    found = next((m.precond.time_scale for m in net.modules() if isinstance(m, EDMDenoiser)), None)
    if cfg.time_scale is not None and cfg.time_scale != found:
        has = f"timestep scale {found:g}" if found is not None else "no EDM timestep scale"
        raise CMTError(f"--time-scale {cfg.time_scale:g} only shapes a fresh UNet, and {origin} has {has}; "
                       "drop --time-scale")
    return dataclasses.replace(cfg, time_scale=found)
