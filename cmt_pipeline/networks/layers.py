"""Building blocks of EDM's networks (NVlabs/edm training/networks.py), written for this project.

Parameter and buffer names follow the reference (weight, bias, resample_filter, freqs) so published state dicts
load unchanged. As in the reference, every layer casts its weights to the input's dtype, so a network whose
preconditioning feeds it float16 runs in float16 while the noise/label mapping stays in float32.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import silu


def weight_init(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """EDM's initialisers: xavier/kaiming, uniform/normal (a network's init only matters for training from scratch;
    published weights replace it)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


def _param(shape, init_mode, fan_in, fan_out, gain) -> torch.nn.Parameter:
    return torch.nn.Parameter(weight_init(shape, init_mode, fan_in, fan_out) * gain)


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _param([out_features, in_features], init_mode, in_features, out_features, init_weight)
        self.bias = _param([out_features], init_mode, in_features, out_features, init_bias) if bias else None

    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), b)


class Conv2d(torch.nn.Module):
    """A square convolution (kernel 0 = none: a pure resampler) with optional 2x up- or downsampling by the
    separable low-pass `resample_filter`. Fused resampling (NCSN++'s residual encoder) convolves first at the
    full resolution and then filters with stride 2, which pads differently and so is a different function."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        if up and down:
            raise ValueError("a convolution resamples up or down, not both")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        self.weight = _param([out_channels, in_channels, kernel, kernel], init_mode, fan_in, fan_out,
                             init_weight) if kernel else None
        self.bias = _param([out_channels], init_mode, fan_in, fan_out, init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()  # 2-D, unit DC gain
        self.register_buffer("resample_filter", f if up or down else None)

    def _upsample(self, x, f, padding):
        """Zero-stuffing transposed convolution; x4 restores the DC gain the stuffed zeros remove."""
        return torch.nn.functional.conv_transpose2d(x, (f * 4).tile(x.shape[1], 1, 1, 1), groups=x.shape[1],
                                                    stride=2, padding=padding)

    def _downsample(self, x, f, padding):
        return torch.nn.functional.conv2d(x, f.tile(x.shape[1], 1, 1, 1), groups=x.shape[1], stride=2,
                                          padding=padding)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and w is not None and self.up:
            x = self._upsample(x, f, max(f_pad - w_pad, 0))
            x = torch.nn.functional.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and w is not None and self.down:
            x = torch.nn.functional.conv2d(x, w, padding=w_pad + f_pad)
            x = self._downsample(x, f, 0)
        else:
            if self.up:
                x = self._upsample(x, f, f_pad)
            if self.down:
                x = self._downsample(x, f, f_pad)
            if w is not None:
                x = torch.nn.functional.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(torch.nn.Module):
    """Group norm with at most 32 groups and at least `min_channels_per_group` channels in each (narrow layers
    get fewer groups)."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype),
                                              self.eps)


def attention(q, k, v):
    """softmax(q^T k / sqrt(c)) applied to v, for (N, C, L) tensors; the softmax in float32 as in the reference
    (so float16 networks keep their attention weights exact), the result in the input's dtype."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2))
    return out.transpose(1, 2).to(v.dtype)


class UNetBlock(torch.nn.Module):
    """The residual block shared by DDPM++, NCSN++ and ADM: norm-SiLU-conv (optionally resampling), the embedding
    added (or, adaptive_scale, applied as scale and shift), norm-SiLU-dropout-conv, a skip path (a projection when
    the shape changes), then optional multi-head self-attention. skip_scale keeps the variance of sums at 1."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5, resample_filter=(1, 1),
                 resample_proj=False, adaptive_scale=True, init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = init or {}
        init_zero = init_zero if init_zero is not None else {"init_weight": 0}
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.num_heads = heads if attention else 0
        self.skip_scale, self.adaptive_scale = skip_scale, adaptive_scale
        self.dropout = torch.nn.Dropout(dropout)  # a module, so a trainer can set its rate (no parameters)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter,
                               **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(self.dropout(h))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            b, c = x.shape[:2]
            # qkv's channels are laid out (head, channel, q/k/v) in the published weights
            q, k, v = self.qkv(self.norm2(x)).reshape(b * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            x = (self.proj(attention(q, k, v).reshape(x.shape)) + x) * self.skip_scale
        return x


def drop_labels(labels, p: float, training: bool):
    """Classifier-free guidance training: zero each sample's label row with probability p (training only)."""
    if not (training and p):
        return labels
    keep = torch.rand([labels.shape[0], 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)


class PositionalEmbedding(torch.nn.Module):
    """Transformer sinusoids [cos, sin] of the noise label at geometric frequencies 1 .. 1/max_positions
    (endpoint: the last frequency is exactly 1/max_positions, as DDPM++ has it)."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features [cos, sin] of the noise label (NCSN++); the frequencies are a buffer of the
    published weights."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)
