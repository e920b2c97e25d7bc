"""A 1- or 2-step image generator made by cmt (Consistency Mid-Training), as a diffusers pipeline that needs only
torch and diffusers. `cmt export` copies this file verbatim into the folder it writes (and into gap_embedding/,
where diffusers looks for a custom component's code), and cmt itself samples exported folders through it, so the
folder and `cmt sample` run the same code. Load a folder with

    pipe = DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)
    images = pipe(batch_size=16, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images

Noise convention EDM / VE: x_sigma = x0 + sigma * eps. The UNet is EDM-preconditioned (config: sigma_data,
time_scale, boundary_sigma):

    D(x, sigma) = c_skip x + c_out F(c_in x, time_scale * log(sigma) / 4)
    c_in = 1 / sqrt(sigma^2 + sd^2), c_skip = sd^2 / ((sigma - s)^2 + sd^2),
    c_out = (sigma - s) sd / sqrt(sigma^2 + sd^2)

A consistency student (parametrisation "consistency") is D itself, a jump to the data from any sigma. A MeanFlow
student predicts the average velocity u(z, r, t) in flow-matching time (z = x / (1 + sigma), t = sigma / (1 + sigma)):
D's velocity at t, with an embedding of the gap t - r (the gap_embedding component) added to the UNet's time
embedding; its jump to the data is z - t u(z, 0, t). Sampling: x0 = jump(sigma_max * noise, sigma_max), and for
2 steps x0 = jump(x0 + sigma_mid * noise', sigma_mid). A latent student's samples are decoded by the vae
component, its latents scaled the way diffusers pipelines scale them (scaling_factor, shift_factor, or per-channel
latents_mean / latents_std).

Self-contained on purpose: it is copied verbatim into exported folders and may import only torch and diffusers,
so it keeps its own copy of the flow-matching conversions that cmt_pipeline/coordinates.py states for the package.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.utils.torch_utils import randn_tensor


def column(sigma, x: torch.Tensor) -> torch.Tensor:
    """A float, 0-d or (B,) noise level as a (B, 1, 1, 1) tensor in x's dtype and device (a Python number as a fill
    on the device: a host tensor copied there would wait for the device)."""
    if isinstance(sigma, (int, float)):
        sigma = torch.full((), float(sigma), dtype=x.dtype, device=x.device)
    else:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def latent_scale_shift(vae_config) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, C, 1, 1): latents = (mean(E(image)) - shift) * scale and
    image = D(latents / scale + shift)."""
    c = vae_config.latent_channels
    mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
    shift = torch.full((c,), float(vae_config.shift_factor or 0)) if mean is None else torch.tensor(mean).float()
    scale = vae_config.scaling_factor / (torch.ones(c) if std is None else torch.tensor(std).float())
    return scale.reshape(1, c, 1, 1), shift.reshape(1, c, 1, 1)


class GapEmbedding(ModelMixin, ConfigMixin):
    """A MeanFlow student's embedding of the time gap t - r, added to the UNet's time embedding."""

    @register_to_config
    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.embedding = TimestepEmbedding(in_channels, time_embed_dim)


class FewStepPipeline(DiffusionPipeline):
    _optional_components = ["gap_embedding", "vae"]

    def __init__(self, unet, gap_embedding=None, vae=None, parametrisation: str = "consistency",
                 sigma_data: float = 0.5, time_scale: float = 1000.0, boundary_sigma: float = 0.0,
                 num_classes: int = 0, gap_scale: float = 1000.0, sigma_max: float = 80.0, sigma_mid: float = 0.821):
        super().__init__()
        self.register_modules(unet=unet, gap_embedding=gap_embedding, vae=vae)
        self.register_to_config(parametrisation=parametrisation, sigma_data=sigma_data, time_scale=time_scale,
                                boundary_sigma=boundary_sigma, num_classes=num_classes, gap_scale=gap_scale,
                                sigma_max=sigma_max, sigma_mid=sigma_mid)
        self._gap = None  # set only while a MeanFlow velocity is computed; read by the hook below
        if gap_embedding is not None:
            unet.time_embedding.register_forward_hook(self._add_gap)

    def _add_gap(self, module, inputs, out):
        if self._gap is None:
            return out
        proj = self.unet.time_proj(self._gap * self.config.gap_scale).to(out.dtype)
        return out + self.gap_embedding.embedding(proj)

    def edm(self, x, sigma, labels=None):
        """The preconditioned network D(x, sigma): a consistency student's jump to the data."""
        sd, s = self.config.sigma_data, self.config.boundary_sigma
        sig = column(sigma, x).float()
        c_in = 1 / (sig**2 + sd**2).sqrt()
        c_skip = sd**2 / ((sig - s) ** 2 + sd**2)
        c_out = (sig - s) * sd / (sig**2 + sd**2).sqrt()
        c_noise = sig.log() / 4
        xf = x.float()
        f = self.unet(c_in * xf, c_noise.flatten() * self.config.time_scale, class_labels=labels).sample
        return (c_skip * xf + c_out * f.float()).to(x.dtype)

    def velocity(self, z, r, t, labels=None):
        """MeanFlow's average velocity u(z, r, t): D's velocity at t with the gap t - r in the time embedding."""
        t_col, r_col = column(t, z).float(), column(r, z).float()
        sigma = t_col / (1 - t_col)
        x = z.float() * (1 + sigma)
        self._gap = (t_col - r_col).flatten()
        try:
            d = self.edm(x, sigma.flatten(), labels).float()
        finally:
            self._gap = None
        return ((x - d) / sigma - d).to(z.dtype)

    def denoise(self, x, sigma, labels=None):
        """One jump to the data from x at noise level sigma (labels: (B,) class indices, class-conditional only)."""
        labels = labels.reshape(x.shape[0]).long() if self.config.num_classes else None
        if self.config.parametrisation == "consistency":
            return self.edm(x, sigma, labels)
        s = column(sigma, x).float()
        t = s / (1 + s)
        z = x.float() / (1 + s)
        return (z - t * self.velocity(z, 0.0, t.flatten(), labels).float()).to(x.dtype)

    def decode(self, latents):
        """Scaled latents -> images clamped to [-1, 1] (pixel-space students: the samples as they are)."""
        if self.vae is None:
            return latents
        scale, shift = (v.to(latents.device) for v in latent_scale_shift(self.vae.config))
        return self.vae.decode(latents.float() / scale + shift).sample.clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 1, class_labels=None, generator=None,
                 latents: torch.Tensor | None = None, renoise: torch.Tensor | None = None,
                 sigma_max: float | None = None, sigma_mid: float | None = None,
                 output_type: str = "pil", return_dict: bool = True, steps: int | None = None,
                 noise: torch.Tensor | None = None):
        """Sample in `num_inference_steps` (1 or 2) network evaluations, with diffusers' calling convention.
        Class-conditional students need `class_labels` (one index, or one per sample). `latents` (B, C, H, W: the
        unit Gaussian prior, scaled by sigma_max here) and `renoise` (B, 1, C, H, W) may be given, else they are
        drawn from `generator`. output_type 'pt': tensors as the student and VAE produce them (about [-1, 1],
        unclamped for pixel-space students); 'np': arrays in [0, 1]; 'pil': images. `steps` and `noise` are the
        names of earlier versions, kept as aliases."""
        if steps is not None:
            num_inference_steps = steps
        if noise is not None:
            if latents is not None:
                raise ValueError("pass latents or its alias noise, not both")
            latents = noise
        steps, noise = num_inference_steps, latents
        if steps not in (1, 2):
            raise ValueError(f"a few-step student samples in 1 or 2 steps, got {steps}")
        c, dev = self.config, self.unet.device
        size = self.unet.config.sample_size
        shape = (self.unet.config.in_channels, *(size if isinstance(size, (list, tuple)) else (size, size)))
        if noise is None:
            noise = randn_tensor((batch_size, *shape), generator=generator, device=dev)
        if steps == 2 and renoise is None:
            renoise = randn_tensor((len(noise), 1, *shape), generator=generator, device=dev)
        labels = None
        if c.num_classes:
            if class_labels is None:
                raise ValueError(f"this student is class-conditional ({c.num_classes} classes): pass class_labels")
            labels = torch.as_tensor(class_labels, device=dev).long().expand(len(noise))
        s_max = c.sigma_max if sigma_max is None else sigma_max
        x = self.denoise(noise.to(dev) * s_max, s_max, labels)
        if steps == 2:
            s = c.sigma_mid if sigma_mid is None else sigma_mid
            x = self.denoise(x + s * renoise[:, 0].to(dev), s, labels)
        images = self.decode(x)
        if output_type != "pt":
            images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            images = self.numpy_to_pil(images) if output_type == "pil" else images
        return ImagePipelineOutput(images=images) if return_dict else (images,)
