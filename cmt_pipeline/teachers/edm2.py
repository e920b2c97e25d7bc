"""EDM2's `Precond` (NVlabs/edm2 training/networks_edm2.py) behind the denoiser seam.

    D(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4),  c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2),  c_in = 1 / sqrt(sigma^2 + sd^2)

Built from the reference's own constructor arguments (a snapshot's init_kwargs) with its parameter names, so a
published network loads strictly; the ImageNet-512 networks work on SD-VAE latents, which `latents` (the
snapshot's StabilityVAEEncoder record) describes for latents.py.
"""

from __future__ import annotations

import torch

from ..networks.edm2 import MPConv, MPFourier, UNet
from .base import sigma_column
from .native import NativeDenoiser, register


@register
class EDM2Precond(NativeDenoiser):
    reference = "Precond"

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16=True, sigma_data=0.5, logvar_channels=128,
                 **unet_kwargs):
        super().__init__(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         use_fp16=use_fp16, sigma_data=sigma_data, logvar_channels=logvar_channels, **unet_kwargs)
        self.shape = (img_channels, img_resolution, img_resolution)
        self.num_classes = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         **unet_kwargs)
        # The training-time uncertainty head: unused for denoising, kept so the published state dict loads strictly.
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(self, x, sigma, class_labels=None):
        """D(x, sigma) in float32; the U-Net runs in float16 on CUDA when use_fp16, as the reference does."""
        x = x.to(torch.float32)
        sigma = sigma_column(sigma, x)
        labels = self.one_hot(class_labels, x)
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.flatten().log() / 4
        f = self.unet((c_in * x).to(dtype), c_noise, labels)
        return c_skip * x + c_out * f.to(torch.float32)
