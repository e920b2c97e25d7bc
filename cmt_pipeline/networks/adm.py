"""DhariwalUNet: the ADM backbone of Dhariwal & Nichol as EDM parametrises it (NVlabs/edm training/networks.py;
EDM's ImageNet-64 networks), written for this project: same constructor arguments, same parameter names.

Unlike SongUNet it scales and shifts the normalised activations by the embedding (adaptive_scale), uses one
attention head per 64 channels, adds the class embedding after the MLP, and has a single output head.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import silu

from .layers import Conv2d, drop_labels, GroupNorm, Linear, PositionalEmbedding, UNetBlock


class DhariwalUNet(torch.nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=192,
                 channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3, attn_resolutions=[32, 16, 8],
                 dropout=0.10, label_dropout=0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        # Encoder: an input convolution, then per level a downsampling block (below the top) and num_blocks blocks;
        # every output is kept as a skip for the decoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        skips = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, 3, **init)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            skips.append(cout)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cout, model_channels * mult,
                                                                attention=res in attn_resolutions, **block)
                cout = model_channels * mult
                skips.append(cout)

        # Decoder: two middle blocks (bottom) or an upsampling block, then num_blocks + 1 blocks taking one skip each.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cout + skips.pop(), model_channels * mult,
                                                                attention=res in attn_resolutions, **block)
                cout = model_channels * mult
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, **init_zero)

    def embed(self, noise_labels, class_labels, augment_labels):
        """Noise label sinusoids (+ augmentation labels) through a 2-layer MLP, then the class embedding (its rows
        dropped with label_dropout in training)."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(drop_labels(class_labels, self.label_dropout, self.training))
        return silu(emb)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for name, layer in self.dec.items():
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(silu(self.out_norm(x)))
