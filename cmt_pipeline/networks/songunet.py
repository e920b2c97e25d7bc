"""SongUNet: the DDPM++ and NCSN++ backbones of Song et al. as EDM parametrises them (NVlabs/edm
training/networks.py), written for this project: same constructor arguments, same parameter names.

DDPM++ = positional embedding, standard encoder and decoder, resample filter [1,1]; NCSN++ = Fourier embedding
(channel_mult_noise 2), residual encoder, resample filter [1,3,3,1]. The encoder's `aux` modules carry a second,
progressively downsampled copy of the input (encoder 'skip': added to each level's first output; 'residual':
mixed in with variance-preserving sums); a 'skip' decoder sums per-level RGB outputs, upsampled, into the result.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import silu

from .layers import Conv2d, FourierEmbedding, drop_labels, GroupNorm, Linear, PositionalEmbedding, UNetBlock


class SongUNet(torch.nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=[1, 2, 2, 2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.10,
                 label_dropout=0, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=[1, 1]):
        for name, value, allowed in (("embedding_type", embedding_type, ("fourier", "positional")),
                                     ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                     ("decoder_type", decoder_type, ("standard", "skip"))):
            if value not in allowed:
                raise ValueError(f"SongUNet {name} must be one of {allowed}, got {value!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False, init=init,
                     init_zero=init_zero, init_attn=dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2)))

        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder: per level, a downsampling block (below the top) then num_blocks blocks; every output but the
        # aux path's is kept as a skip for the decoder.
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        skips = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3, **init)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, fused_resample=True,
                                                                   resample_filter=resample_filter, **init)
                    caux = cout
            skips.append(cout)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cout, model_channels * mult,
                                                                attention=res in attn_resolutions, **block)
                cout = model_channels * mult
                skips.append(cout)

        # Decoder: per level, two middle blocks (bottom) or an upsampling block, then num_blocks + 1 blocks that
        # each take one skip; an output head at the top level (every level for the 'skip' decoder).
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cout + skips.pop(), model_channels * mult, attention=idx == num_blocks and res in attn_resolutions,
                    **block)
                cout = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, **init_zero)

    def embed(self, noise_labels, class_labels, augment_labels):
        """The embedding every block receives: noise label sinusoids ([sin, cos] order in this network), plus the
        class (one-hot rows scaled to unit norm per entry, dropped with label_dropout in training) and the
        augmentation labels, through a 2-layer MLP."""
        emb = torch.cat(self.map_noise(noise_labels).chunk(2, dim=1)[::-1], dim=1)
        if self.map_label is not None:
            labels = drop_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return silu(self.map_layer1(silu(self.map_layer0(emb))))

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips, aux = [], x
        for name, layer in self.enc.items():
            if name.endswith("aux_down"):
                aux = layer(aux)
            elif name.endswith("aux_skip"):
                x = skips[-1] = x + layer(aux)
            elif name.endswith("aux_residual"):
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)
        out = head = None
        for name, layer in self.dec.items():
            if name.endswith("aux_up"):
                out = layer(out)
            elif name.endswith("aux_norm"):
                head = layer(x)
            elif name.endswith("aux_conv"):
                head = layer(silu(head))
                out = head if out is None else head + out
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return out
