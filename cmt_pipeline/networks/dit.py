"""The DiT / SiT transformer backbone (facebookresearch/DiT models.py; willisma/SiT models.py is the same network),
written here with the reference's constructor arguments and parameter names, so a published state dict loads
unchanged and the forward pass repeats the reference's operations in the same order (the equality check in
benchmarks/equality_dit.py holds it to 1e-5).

Why not diffusers' DiTTransformer2DModel: its timestep embedding spaces the frequencies by 1/(half - 1)
(`downscale_freq_shift=1`) where DiT uses 1/half, so the same weights give a different network.

The network is a plain function of (x, t, y): label dropout (DiT's training-time `token_drop`) is not done here;
the extra embedding row it trained is the "no class" label that guidance passes explicitly.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

FREQUENCY_DIM = 256  # DiT's TimestepEmbedder frequency_embedding_size


@functools.lru_cache(maxsize=None)
def frequencies(half: int, max_period: float, device: torch.device) -> torch.Tensor:
    """max_period^(-i / half) for i < half, computed on the host as the reference does (same bits) and copied to
    `device` once, not at every forward (a copy that would sync the stream)."""
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(device)


def timestep_features(t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f_i), sin(t f_i)] with f_i = max_period^(-i / half), i < half: DiT's sinusoidal timestep features."""
    args = t[:, None].float() * frequencies(dim // 2, max_period, t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_positions(dim: int, grid: int) -> torch.Tensor:
    """(grid * grid, dim) fixed 2-D sine-cosine position table: half the channels encode the row, half the column,
    each as [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim / 4)); computed in float64 like the reference."""
    w = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = pos.repeat_interleave(grid), pos.repeat(grid)  # token k sits at row k // grid, column k % grid

    def encode(p):
        a = p[:, None] * w[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        return self.mlp(timestep_features(t))

    @property
    def linear_1(self):  # diffusers' TimestepEmbedding names, which models/meanflow.py reads the sizes from
        return self.mlp[0]

    @property
    def linear_2(self):
        return self.mlp[2]


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + (dropout_prob > 0), hidden_size)

    def forward(self, labels):
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """adaLN-Zero block: c gives shift, scale and gate for the attention and the MLP branches."""

    def __init__(self, hidden_size, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """model(x, t, y) -> (N, out_channels, H, W); out_channels = 2 * in_channels when learn_sigma (prediction,
    variance). Arguments and defaults are the reference's (DiT-XL/2 on 32x32 SD-VAE latents)."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True):
        super().__init__()
        self.patch_size, self.out_channels = patch_size, in_channels * (2 if learn_sigma else 1)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # fixed, but a buffer under the reference's name so its state dict (where it is a frozen parameter) loads
        self.register_buffer("pos_embed", sincos_positions(hidden_size, input_size // patch_size)[None])
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    # the (projection, embedding) pair through which models/meanflow.py adds MeanFlow's gap to the timestep embedding
    time_proj = staticmethod(timestep_features)

    @property
    def timestep_embedder(self):
        return self.t_embedder

    def unpatchify(self, x):
        n, tokens, _ = x.shape
        p, c, h = self.patch_size, self.out_channels, math.isqrt(tokens)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(n, h, h, p, p, c))
        return x.reshape(n, c, h * p, h * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))
