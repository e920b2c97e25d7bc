"""EDM's four preconditionings (NVlabs/edm training/networks.py: VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond)
around the native backbones of networks/, behind the denoiser seam. Each takes exactly its reference class's
constructor arguments and computes the reference's

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)

with its own c_* (as in the reference, F runs in float16 on CUDA when use_fp16, everything else in float32, and
D is float32). Labels at the seam are integers; the backbones take them one-hot.
"""

from __future__ import annotations

import math

import torch

from ..errors import CMTError
from ..networks.adm import DhariwalUNet
from ..networks.songunet import SongUNet
from .base import sigma_column
from .native import NativeDenoiser, register

BACKBONES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class EDMFamilyPrecond(NativeDenoiser):
    """What the four share: the backbone (`self.model`), the attributes the reference keeps, and D from the
    subclass's scalings(sigma) -> (c_skip, c_out, c_in, c_noise)."""

    out_factor = 1  # iDDPM's backbone also predicts variances: twice the channels, D reads the first half

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs, **settings):
        super().__init__(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         use_fp16=use_fp16, **settings, model_type=model_type, **model_kwargs)
        if model_type not in BACKBONES:
            raise CMTError(f"{self.reference}: unknown model_type {model_type!r}; supported: {', '.join(BACKBONES)}")
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = (img_resolution, img_channels,
                                                                                 label_dim, use_fp16)
        for name, value in settings.items():
            setattr(self, name, value)
        self.shape, self.num_classes = (img_channels, img_resolution, img_resolution), label_dim
        self.model = BACKBONES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                           out_channels=img_channels * self.out_factor, label_dim=label_dim,
                                           **model_kwargs)

    def scalings(self, sigma: torch.Tensor):
        raise NotImplementedError

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = sigma_column(sigma, x)
        labels = self.one_hot(class_labels, x)
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        f = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=labels)
        return c_skip * x + c_out * f[:, :self.img_channels].to(torch.float32)


@register
class VPPrecond(EDMFamilyPrecond):
    """Variance preserving (Song et al.'s VP SDE): c_noise = (M - 1) t(sigma) with the linear-beta schedule."""

    reference = "VPPrecond"

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, beta_d=19.9, beta_min=0.1, M=1000,
                 epsilon_t=1e-5, model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         beta_d=beta_d, beta_min=beta_min, M=M, epsilon_t=epsilon_t)
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def scalings(self, sigma):
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


@register
class VEPrecond(EDMFamilyPrecond):
    """Variance exploding (Song et al.'s VE SDE): the network sees x unscaled and log(sigma / 2)."""

    reference = "VEPrecond"

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0.02, sigma_max=100,
                 model_type="SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         sigma_min=sigma_min, sigma_max=sigma_max)

    def scalings(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()


@register
class iDDPMPrecond(EDMFamilyPrecond):  # noqa: N801 - the reference's class name
    """Improved DDPM (cosine schedule): the network sees the index of the nearest of its M + 1 discrete noise
    levels `u`, a buffer of the published weights."""

    reference = "iDDPMPrecond"
    out_factor = 2

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, C_1=0.001, C_2=0.008, M=1000,
                 model_type="DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         C_1=C_1, C_2=C_2, M=M)
        # u[j-1] from u[j] (u[M] = 0), in float32 as the reference computes it
        alpha_bar = (0.5 * math.pi * torch.arange(M + 1) / M / (C_2 + 1)).sin() ** 2
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):
            u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar[j - 1] / alpha_bar[j]).clip(min=C_1) - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def scalings(self, sigma):
        # torch.cdist, as the reference: its matrix-product distances decide near-ties the same way
        index = torch.cdist(sigma.reshape(1, -1, 1), self.u.reshape(1, -1, 1)).argmin(2)
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), self.M - 1 - index.reshape(sigma.shape).to(torch.float32)


@register
class EDMPrecond(EDMFamilyPrecond):
    """EDM's own (Karras et al. 2022): unit-variance input and target for data of standard deviation sigma_data."""

    reference = "EDMPrecond"

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
                         sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)

    def scalings(self, sigma):
        sd2 = self.sigma_data**2
        return (sd2 / (sigma**2 + sd2), sigma * self.sigma_data / (sigma**2 + sd2).sqrt(), 1 / (sd2 + sigma**2).sqrt(),
                sigma.log() / 4)
