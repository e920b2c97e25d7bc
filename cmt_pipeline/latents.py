"""Latent-space teachers: a diffusers AutoencoderKL between pixels and the space the teacher works in.

Teachers, solvers, stores and trainers only ever see latents; images appear where people look or measure (sample
grids, `cmt sample`, `cmt evaluate`) and where real images enter (`cmt pretrain` / `cmt post-train --data`).
Latents are scaled the way diffusers pipelines scale them, so a pipeline's own denoiser fits unchanged:

    z = (mean(E(image)) - shift) * scale          image = D(z / scale + shift)

with scale = scaling_factor and shift = shift_factor (0 if unset), or, for a VAE that configures per-channel
latents_mean / latents_std, shift = latents_mean and scale = scaling_factor / latents_std.

A native EDM2 network (teachers/edm2.py) instead records its `encoder`: the init arguments of NVlabs/edm2's
StabilityVAEEncoder (vae_name, raw_mean, raw_std, final_mean, final_std). Its latents are
z = (raw - raw_mean) / raw_std * final_std + final_mean with raw the VAE's unscaled latent (scaling_factor unused),
and its VAE sees pixels in [0, 1], not [-1, 1] (EDM2 divides uint8 pixels by 255; the statistics are of those).
The codec then maps the project's [-1, 1] images to and from that range. EDM2 trains on a posterior sample;
encode() here keeps the posterior mean (see encode). The record travels with the codec's description (stores,
checkpoints) and beside a saved copy of the VAE (ENCODER_FILE).

Which VAE belongs to a model (`vae_source`): an explicit --vae folder, else the one a model.ckpt's data or a
store's plan recorded (checked against its recorded fingerprint), else a teacher folder's own `vae/` subfolder
(diffusers' pipeline layout, and what `cmt pretrain --vae` writes), else none (a pixel-space model). A native
latent network's folder names its VAE but does not hold it: it needs --vae (never downloaded at run time).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .models.io import load_model
from .networks.snapshot import read_latents
from .teachers import is_teacher_file
from .stores.layout import read_plan
from .errors import CMTError
from .teachers.base import hash_weights, quiet_libraries

VAE_DIR = "vae"
ENCODER_FILE = "cmt_latent_encoder.json"  # beside a saved VAE: the EDM2 encoder record its latents follow
BATCH = 16  # images per VAE call: its activations at full image resolution, not the batch, bound memory


class LatentCodec(torch.nn.Module):
    def __init__(self, vae, path: str | Path, encoder: dict | None = None):
        from .few_step_pipeline import latent_scale_shift

        super().__init__()
        self.vae, self.path = vae.eval().requires_grad_(False), str(Path(path).resolve())
        self.encoder = encoder
        cfg = vae.config
        # diffusers scaling: the exported pipeline's own, so both decode alike
        scale, shift = latent_scale_shift(cfg) if encoder is None else encoder_scale_shift(encoder, cfg.latent_channels)
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)
        self.latent_channels, self.image_channels = cfg.latent_channels, cfg.out_channels
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)  # spatial downsampling of the encoder
        self._fingerprint = None

    @classmethod
    def load(cls, path: str | Path, encoder: dict | None = None) -> LatentCodec:
        """An AutoencoderKL folder (`vae.save_pretrained(DIR)`), or a pipeline folder holding one in vae/; `encoder`
        (else the one saved beside it) an EDM2 encoder record that sets the latents' statistics."""
        from diffusers import AutoencoderKL

        p = Path(path)
        name = _class_name(p)
        if name != "AutoencoderKL" and _class_name(p / VAE_DIR) == "AutoencoderKL":
            p, name = p / VAE_DIR, "AutoencoderKL"
        fix = "pass a diffusers AutoencoderKL folder (vae.save_pretrained(DIR), or a pipeline's vae/ subfolder)"
        if name is None:
            raise CMTError(f"--vae {path} has no readable config.json; {fix}")
        if name != "AutoencoderKL":
            raise CMTError(f"--vae {path} holds a {name}, not an AutoencoderKL; {fix}")
        try:
            with quiet_libraries():
                vae = AutoencoderKL.from_pretrained(p)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CMTError(f"could not load the AutoencoderKL in {path}: {str(e).splitlines()[0]}; {fix}") from e
        if encoder is None and (p / ENCODER_FILE).is_file():
            encoder = json.loads((p / ENCODER_FILE).read_text())
        return cls(vae, p, encoder)

    @property
    def device(self) -> torch.device:
        return self.shift.device

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        c, h, w = image_shape
        if c != self.vae.config.in_channels or h % self.factor or w % self.factor:
            raise CMTError(f"the VAE in {self.path} encodes {self.vae.config.in_channels}-channel images whose sides "
                           f"are multiples of {self.factor}, got images of shape {tuple(image_shape)}; "
                           "convert or resize the images, or pass the VAE made for them")
        return self.latent_channels, h // self.factor, w // self.factor

    def image_shape(self, latent_shape) -> tuple[int, int, int]:
        _, h, w = latent_shape
        return self.image_channels, h * self.factor, w * self.factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = BATCH, progress: bool = False) -> torch.Tensor:
        """(N, C, H, W) images in [-1, 1] -> scaled latents, on the images' device. Deterministic: the posterior
        mean, not a sample. Images are encoded once into a fixed, fingerprinted training set, so a sample would only
        freeze one arbitrary noise draw into it; the mean is what the decoder reconstructs best, and keeps the set
        reproducible across runs, devices and resumes."""
        out = []
        for b in tqdm(range(0, len(images), batch_size), desc="encode", unit="batch", disable=not progress):
            x = images[b:b + batch_size].to(self.device, torch.float32)
            mean = self.vae.encode(self._to_vae_pixels(x)).latent_dist.mean
            out.append(((mean - self.shift) * self.scale).to(images.device))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = BATCH) -> torch.Tensor:
        """Scaled latents -> float32 images clamped to the data range [-1, 1], on the latents' device."""
        out = []
        for b in range(0, len(latents), batch_size):
            z = latents[b:b + batch_size].to(self.device, torch.float32)
            images = self._from_vae_pixels(self.vae.decode(z / self.scale + self.shift).sample)
            out.append(images.clamp(-1, 1).to(latents.device))
        return torch.cat(out)

    def _to_vae_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> what the VAE was given when the latent statistics were measured ([0, 1] for EDM2)."""
        return images if self.encoder is None else (images + 1) / 2

    def _from_vae_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.encoder is None else images * 2 - 1

    def fingerprint(self) -> str:
        """sha256 of every weight of the autoencoder: names the exact VAE that data or a model was made with."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            hash_weights(h, self.vae)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def describe(self, latent_shape=None) -> dict:
        """What datasets, checkpoints and evaluations record about their VAE."""
        cfg = self.vae.config
        d = {"path": self.path, "class": type(self.vae).__name__, "scaling_factor": cfg.scaling_factor,
             "shift_factor": cfg.shift_factor, "latents_mean": getattr(cfg, "latents_mean", None),
             "latents_std": getattr(cfg, "latents_std", None), "latent_channels": self.latent_channels,
             "downsample": self.factor, "fingerprint": self.fingerprint(), "encoder": self.encoder}
        if latent_shape is not None:
            d.update(latent_shape=list(latent_shape), image_shape=list(self.image_shape(latent_shape)))
        return d

    def check_fit(self, shape, who: str = "teacher") -> None:
        """Refuse a model whose channels are not this VAE's latent channels, naming both and the fix."""
        if shape[0] != self.latent_channels:
            raise CMTError(f"the VAE in {self.path} has {self.latent_channels} latent channels but the {who} works "
                           f"on {shape[0]} channels (shape {tuple(shape)}); pass --vae the autoencoder the {who} "
                           "was trained with, or none for a pixel-space model")

    def save(self, folder: str | Path) -> None:
        """Write the autoencoder as `folder` (diffusers save_pretrained), with its encoder record when it has one:
        makes a model folder self-contained."""
        self.vae.save_pretrained(folder)
        if self.encoder is not None:
            (Path(folder) / ENCODER_FILE).write_text(json.dumps(self.encoder, indent=2) + "\n")


def encoder_scale_shift(encoder: dict, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, C, 1, 1), of EDM2's StabilityVAEEncoder record in this codec's form
    z = (raw - shift) * scale: scale = final_std / raw_std, shift = raw_mean - final_mean / scale (float32 as there)."""
    try:
        raw_mean, raw_std, final_mean, final_std = (torch.as_tensor(encoder[k], dtype=torch.float32).expand(channels)
                                                    for k in ("raw_mean", "raw_std", "final_mean", "final_std"))
    except (KeyError, RuntimeError) as e:
        raise CMTError(f"the latent encoder record {encoder} is not EDM2's StabilityVAEEncoder arguments for "
                       f"{channels} latent channels ({e}); rebuild the network folder from its snapshot") from e
    scale = final_std / raw_std
    shift = raw_mean - final_mean / scale
    return scale.reshape(1, channels, 1, 1), shift.reshape(1, channels, 1, 1)


def _class_name(folder: Path) -> str | None:
    """The diffusers class named by folder/config.json, or None when there is no readable one."""
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name", "model without a _class_name")
    except (OSError, ValueError):
        return None


def vae_source(explicit: str, spec: str, record: dict | None = None) -> tuple[str | None, str | None, dict | None]:
    """(VAE folder, fingerprint it must have or None, EDM2 encoder record or None) for a model or store `spec`;
    (None, None, None) = pixel space. An explicit folder replaces the recorded one but keeps its encoder record.
    `record`: what the caller has already read of spec (its model.ckpt, a store's plan), so it is not read again."""
    path = Path(spec) if spec else None
    recorded, folder = None, None
    if path is not None and path.is_file() and not is_teacher_file(path):  # a published file names no VAE folder
        recorded = (load_model(path) if record is None else record).get("data", {}).get("vae")
    elif path is not None and ("://" in spec or (path / "plan.json").is_file()):  # a store, local or remote
        recorded = (read_plan(spec) if record is None else record).get("vae")
    elif path is not None and (path / VAE_DIR / "config.json").is_file():
        folder = str(path / VAE_DIR)
    expected = recorded.get("encoder") if recorded else native_latents(path) if path is not None else None
    encoder = expected if expected and "raw_mean" in expected else None  # EDM2's statistics (DiT's: the VAE's own)
    if explicit:
        return explicit, None, encoder
    if folder is not None:
        return folder, None, encoder
    if recorded:
        return recorded["path"], recorded["fingerprint"], encoder
    if expected is not None:
        name = expected.get("vae_name") or expected.get("vae") or "the VAE it was trained with"
        raise CMTError(f"{spec} works on the latents of the VAE {name}, which it does not hold; pass --vae DIR with "
                       "that diffusers AutoencoderKL (AutoencoderKL.from_pretrained(NAME).save_pretrained(DIR) "
                       "where the hub is reachable)")
    return None, None, None


def native_latents(path: Path) -> dict | None:
    """The latents record of a native network folder (teachers/native.py: the VAE it expects, and EDM2's encoder
    statistics) or of an NVlabs snapshot file; None for anything else. A DiT / SiT .pt says which VAE only once its
    weights are read (their shapes give the channels), so it is not opened here: pass --vae."""
    from .teachers.native import NATIVE_FILE

    if is_teacher_file(path):
        return read_latents(path) if path.suffix.lower() == ".pkl" else None
    try:
        return json.loads((path / NATIVE_FILE).read_text()).get("latents")
    except (OSError, ValueError):
        return None


def load_vae(explicit: str, spec: str, device="cpu", shape=None, who: str = "teacher",
             record: dict | None = None) -> LatentCodec | None:
    """The VAE of `spec` (see vae_source) on `device`, checked against its record and against `shape`'s channels."""
    path, fingerprint, encoder = vae_source(explicit, spec, record)
    if path is None:
        return None
    if not Path(path).exists():
        raise CMTError(f"--vae {path} does not exist; pass a diffusers AutoencoderKL folder" if explicit else
                       f"{spec} was made with the VAE in {path}, which no longer exists; "
                       "pass --vae DIR (that autoencoder)")
    codec = LatentCodec.load(path, encoder)
    if fingerprint and codec.fingerprint() != fingerprint:
        raise CMTError(f"the VAE in {path} is not the one {spec} was made with (fingerprint "
                       f"{codec.fingerprint()[:12]}, recorded {fingerprint[:12]}); pass --vae DIR with the original")
    if shape is not None:
        codec.check_fit(shape, who)
    return codec.to(device)


def encode_images(data, codec: LatentCodec, batch_size: int = BATCH, progress: bool = True):
    """An ImageData (datasets.py) of images -> the same data as latents, once; its description records the VAE
    and the latents' standard deviation (compare it with sigma_data, 0.5 by default)."""
    from .datasets import ImageData

    latent_shape = codec.latent_shape(data.shape)
    z = codec.encode(data.images, batch_size, progress).cpu()
    desc = {**data.description, "shape": list(latent_shape), "vae": codec.describe(latent_shape),
            "latent_std": float(z.std())}
    return ImageData(z, data.labels, data.num_classes, desc)
