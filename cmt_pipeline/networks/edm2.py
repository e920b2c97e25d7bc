"""EDM2's magnitude-preserving U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models"), written natively so that its published snapshots load with no code from them.

Constructor arguments (names, defaults) and parameter / buffer names equal NVlabs/edm2's
training/networks_edm2.py, so a snapshot's `init_kwargs` build this module and its state dict loads strictly.
Every layer keeps activations at unit expected magnitude: weights are normalised per output channel at each
call (and, in training mode, also written back normalised: "forced" weight normalisation), and the non-linearity,
sums and concatenations carry constants that undo their change of magnitude. The operations are done in the
reference's order and precisions, so outputs agree to float32 rounding (benchmarks/equality_edm2.py).
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as F


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x scaled to unit root-mean-square over `dim` (default: all but the first dimension). The norm is taken in
    float32 and eps is added at the rms scale, so tiny vectors are not blown up."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


@functools.lru_cache(maxsize=None)
def filter_kernel(f: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 2-D kernel outer(f, f) / sum(f)^2 of a 1-D filter, on `device`: built on the host once per
    (filter, dtype, device), since a host-to-device copy at every forward would sync the stream."""
    t = torch.tensor(f, dtype=torch.float32)
    if t.ndim != 1 or len(t) % 2:
        raise ValueError(f"the resampling filter must be 1-D of even length, got {list(f)}")
    t = t / t.sum()
    return torch.outer(t, t)[None, None].to(dtype).to(device)


def resample(x: torch.Tensor, f=(1, 1), mode: str = "keep") -> torch.Tensor:
    """2x down- or upsampling by the separable, normalised filter `f` applied per channel ('keep': x as is).
    Upsampling multiplies the filter by 4, the number of outputs each input feeds, to keep the magnitude."""
    if mode == "keep":
        return x
    pad = (len(f) - 1) // 2
    kernel = filter_kernel(tuple(f), x.dtype, x.device).tile([x.shape[1], 1, 1, 1])
    if mode == "down":
        return F.conv2d(x, kernel, groups=x.shape[1], stride=2, padding=(pad,))
    if mode != "up":
        raise ValueError(f"resample mode must be 'keep', 'down' or 'up', got {mode!r}")
    return F.conv_transpose2d(x, kernel * 4, groups=x.shape[1], stride=2, padding=(pad,))


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its output rms for unit-normal input (0.596), so magnitudes pass through unchanged."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b rescaled to unit magnitude for uncorrelated unit-magnitude a and b."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation weighting a by (1 - t) and b by t per channel count, with unit total magnitude."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / math.sqrt(na) * (1 - t) * a, c / math.sqrt(nb) * t * b], dim=dim)


class MPFourier(torch.nn.Module):
    """Random Fourier features of a scalar (the noise level), scaled by sqrt(2) to unit magnitude. Frequencies and
    phases are buffers: fixed at initialisation, saved with the weights."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.to(torch.float32), self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(torch.nn.Module):
    """Magnitude-preserving convolution (kernel [k, k]) or fully-connected layer (kernel []): each output channel's
    weights are normalised to unit norm and scaled by gain / sqrt(fan-in). In training mode the stored weights are
    first overwritten by their normalised copy (forced weight normalisation), which keeps their scale and so the
    effective learning rate fixed. The normalised weights then enter the graph as a copy: a later training-mode call
    before the backward pass (a second forward in one step, e.g. ECT's target) rewrites the parameter in place,
    which autograd refuses for a tensor it saved; the values, and so outputs and gradients, are the reference's."""

    def __init__(self, in_channels: int, out_channels: int, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain=1) -> torch.Tensor:
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
            w = w.clone()
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=(w.shape[-1] // 2,))


class Block(torch.nn.Module):
    """Residual block of the encoder ('enc': resample, 1x1 skip, pixel norm on the main path) or decoder ('dec': the
    1x1 skip only where the residual joins), modulated by the embedding, with optional multi-head self-attention."""

    def __init__(self, in_channels, out_channels, emb_channels, flavor="enc", resample_mode="keep",
                 resample_filter=[1, 1], attention=False, channels_per_head=64, dropout=0, res_balance=0.3,
                 attn_balance=0.3, clip_act=256):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        attn = self.num_heads != 0
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if attn else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if attn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm: each position's channel vector to unit rms

        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1  # emb_gain starts at 0: no modulation at init
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout != 0:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads != 0:
            # Explicit einsum attention, not scaled_dot_product_attention: it is what the reference computes.
            qkv = self.attn_qkv(x)
            qkv = qkv.reshape(qkv.shape[0], self.num_heads, -1, 3, qkv.shape[2] * qkv.shape[3])
            q, k, v = normalize(qkv, dim=2).unbind(3)  # unit-rms queries, keys and values per head
            w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            y = self.attn_proj(torch.einsum("nhqk,nhck->nhcq", w, v).reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x


class UNet(torch.nn.Module):
    """EDM2's U-Net: Fourier noise embedding (+ class embedding), an encoder of Blocks per resolution, a decoder
    joining the encoder's outputs by mp_cat, and an output convolution whose gain starts at 0."""

    def __init__(self, img_resolution, img_channels, label_dim, model_channels=192, channel_mult=[1, 2, 3, 4],
                 channel_mult_noise=None, channel_mult_emb=None, num_blocks=3, attn_resolutions=[16, 8],
                 label_balance=0.5, concat_balance=0.5, **block_kwargs):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        # Module names carry the resolution ("16x16_block0"): they are the published state-dict keys.
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1  # the input gets a constant channel of ones (lets the first conv see the border)
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down",
                                                      **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc",
                                                            attention=res in attn_resolutions, **block_kwargs)

        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up",
                                                    **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x, noise_labels, class_labels):
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            # One-hot rows scaled by sqrt(label_dim) have unit rms, like the noise embedding they are mixed with.
            label = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label, t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)

        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)
