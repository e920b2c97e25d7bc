"""Export a student as a diffusers pipeline folder that samples in 1 or 2 steps with nothing but diffusers + this file:

    DIR/model_index.json   FewStepPipeline, with the preconditioning in its config
    DIR/unet/              a plain diffusers UNet2DModel (save_pretrained): loads with UNet2DModel.from_pretrained

    pipe = FewStepPipeline.from_pretrained(DIR)
    images = pipe(batch_size=16, steps=2, generator=torch.Generator().manual_seed(0)).images

A consistency student is its EDM network (c_skip/c_out/c_in/c_noise in the config, boundary_sigma > 0). A MeanFlow
student u(z, r, t) adds an embedding of the gap t - r to the UNet's time embedding; diffusers' own
`class_embed_type="timestep"` is exactly that (a TimestepEmbedding of time_proj(class_labels) added to the time
embedding), so the gap embedding becomes the UNet's class embedding and the gap is passed as `class_labels`. That
leaves no room for real class labels: class-conditional MeanFlow students are refused.

The pipeline re-states the cmt parametrisation (teachers/edm.py, models/meanflow.py) op for op, so its samples are
bitwise those of the in-process student for the same noise (tests/test_export.py checks this in a fresh process).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .models import BoundaryDenoiser, MeanFlowStudent
from .teachers.base import sigma_column
from .teachers.edm import EDMDenoiser, Precond
from .utils import CMTError


class FewStepPipeline(DiffusionPipeline):
    """1- or 2-step sampling of an exported consistency or MeanFlow student (EDM / VE noise convention):
    x0 = f(sigma_max * noise), and for 2 steps x0 = f(x0 + sigma_mid * noise', sigma_mid)."""

    def __init__(self, unet: UNet2DModel, parametrisation: str = "consistency", sigma_data: float = 0.5,
                 time_scale: float = 1000.0, boundary_sigma: float = 0.0, num_classes: int = 0,
                 gap_scale: float = 1000.0, sigma_max: float = 80.0, sigma_mid: float = 0.821):
        super().__init__()
        self.register_modules(unet=unet)
        self.register_to_config(parametrisation=parametrisation, sigma_data=sigma_data, time_scale=time_scale,
                                boundary_sigma=boundary_sigma, num_classes=num_classes, gap_scale=gap_scale,
                                sigma_max=sigma_max, sigma_mid=sigma_mid)

    def _edm(self) -> EDMDenoiser:
        c = self.config
        return EDMDenoiser(self.unet, Precond(c.sigma_data, c.time_scale, c.boundary_sigma, c.num_classes))

    def _velocity(self, z, r, t):
        """MeanFlow's u(z, r, t), as MeanFlowStudent computes it, the gap entering as the UNet's class label."""
        edm = self._edm()
        t_col, r_col = sigma_column(t, z).float(), sigma_column(r, z).float()
        sigma = t_col / (1 - t_col)
        x = z.float() * (1 + sigma)
        sig = sigma_column(sigma.flatten(), x).float()
        c_in, c_skip, c_out, c_noise = edm.coefficients(sig)
        gap = (t_col - r_col).flatten() * self.config.gap_scale
        f = self.unet(c_in * x, c_noise.flatten() * self.config.time_scale, class_labels=gap).sample
        d = c_skip * x + c_out * f.float()
        return ((x - d) / sigma - d).to(z.dtype)

    def denoise(self, x, sigma, class_labels=None):
        """One jump to the data from x at noise level sigma: f(x, sigma), or z - t u(z, 0, t) for MeanFlow."""
        if self.config.parametrisation == "consistency":
            return self._edm()(x, sigma, class_labels)
        s = sigma_column(sigma, x).float()
        t = s / (1 + s)
        z = x.float() / (1 + s)
        return (z - t * self._velocity(z, 0.0, t.flatten()).float()).to(x.dtype)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, steps: int = 1, sigma_mid: float | None = None, generator=None,
                 class_labels=None, noise: torch.Tensor | None = None, renoise: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        """Sample `batch_size` images in `steps` (1 or 2) network evaluations. `noise` (B, C, H, W) and
        `renoise` (B, 1, C, H, W) unit Gaussians may be given (else drawn from `generator`); output_type
        'pt' gives tensors in [-1, 1], 'np' arrays in [0, 1], 'pil' images."""
        if steps not in (1, 2):
            raise ValueError(f"a few-step student samples in 1 or 2 steps, got {steps}")
        c, shape = self.config, (self.unet.config.in_channels, *self._size())
        dev = self.unet.device
        if noise is None:
            noise = randn_tensor((batch_size, *shape), generator=generator, device=dev)
        if steps == 2 and renoise is None:
            renoise = randn_tensor((len(noise), 1, *shape), generator=generator, device=dev)
        labels = None if class_labels is None else torch.as_tensor(class_labels, device=dev)
        x = self.denoise(noise.to(dev) * c.sigma_max, c.sigma_max, labels)
        if steps == 2:
            s = c.sigma_mid if sigma_mid is None else sigma_mid
            x = self.denoise(x + s * renoise[:, 0].to(dev), s, labels)
        if output_type == "pt":
            images = x
        else:
            images = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            images = self.numpy_to_pil(images) if output_type == "pil" else images
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _size(self):
        size = self.unet.config.sample_size
        return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


def unet_config(net: EDMDenoiser) -> dict:
    """The backbone's UNet2DModel config without diffusers' bookkeeping keys (`_use_default_values` would
    otherwise reset the options overridden here)."""
    return {k: v for k, v in net.backbone.config.items() if not k.startswith("_")}


def to_pipeline(model: torch.nn.Module, sigma_max: float = 80.0, sigma_mid: float = 0.821) -> FewStepPipeline:
    """The pipeline for a student network (an EDMDenoiser, e.g. a consistency student, or a MeanFlowStudent)."""
    if isinstance(model, (MeanFlowStudent, BoundaryDenoiser)) and not isinstance(model.net, EDMDenoiser):
        raise CMTError(f"cannot export a student of a {type(model.net).__name__} teacher as a FewStepPipeline "
                       "(it holds the project's EDM networks only); sample it from its model.ckpt with `cmt sample`")
    if isinstance(model, MeanFlowStudent):
        if model.num_classes:
            raise CMTError("a class-conditional MeanFlow student cannot be exported as one UNet2DModel (its class "
                           "embedding carries the time gap); export an unconditional one")
        net = model.net
        unet = UNet2DModel.from_config({**unet_config(net), "class_embed_type": "timestep"})
        state = {**net.backbone.state_dict(),
                 **{f"class_embedding.{k}": v for k, v in model.gap_embeddings[0].state_dict().items()}}
        unet.load_state_dict(state)
        extra = {"parametrisation": "meanflow", "gap_scale": model.gap_scale}
    elif isinstance(model, EDMDenoiser):
        net, extra = model, {"parametrisation": "consistency"}
        unet = UNet2DModel.from_config(unet_config(net))
        unet.load_state_dict(net.backbone.state_dict())
    else:
        raise CMTError(f"cannot export a {type(model).__name__}; pass a consistency (EDMDenoiser) or MeanFlow student")
    p = net.precond
    return FewStepPipeline(unet.eval(), sigma_data=p.sigma_data, time_scale=p.time_scale,
                           boundary_sigma=p.boundary_sigma, num_classes=p.num_classes, sigma_max=sigma_max,
                           sigma_mid=sigma_mid, **extra)


def export_pipeline(model: torch.nn.Module, out_dir, sigma_max: float = 80.0, sigma_mid: float = 0.821) -> Path:
    """Write to_pipeline(model) with save_pretrained into a temporary folder, renamed into place when complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    to_pipeline(model, sigma_max, sigma_mid).save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
