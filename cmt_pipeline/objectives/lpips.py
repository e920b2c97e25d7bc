"""LPIPS v0.1 'vgg' (Zhang et al. 2018), the CMT paper's mid-training distance, in plain torch and from local files.

d(a, b) = sum over five VGG16 taps l of mean over (h, w) of  w_l . (n(F_l(a)) - n(F_l(b)))^2,
with F_l the features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 channels) of the
input scaled by (x - shift) / scale, n(f) = f / (sqrt(sum_c f^2) + 1e-10) the unit normalisation over channels,
and w_l the learned non-negative 1x1 heads (no bias). As richzhang/PerceptualSimilarity lpips/lpips.py (LPIPS,
ScalingLayer, NetLinLayer, normalize_tensor) and lpips/pretrained_networks.py (vgg16: slices at torchvision's
features[0:4], [4:9], [9:16], [16:23], [23:30]); inputs in [-1, 1], 3 channels.

The trunk is torchvision's `vgg16().features` rebuilt layer for layer (same indices, so a torchvision state dict,
vgg16-397923af.pth, loads into it; its classifier.* keys are ignored), and the heads load from LPIPS's
weights/v0.1/vgg.pth (keys lin0.model.1.weight .. lin4.model.1.weight). Nothing is downloaded.

Resolution: the pictures are resized bilinearly (align_corners=False) to size x size first. openai/
consistency_models (cm/karras_diffusion.py, loss_norm "lpips") upsamples images smaller than 256 to 224 before
LPIPS; sony/cmt (training/loss.py, DPMSolverLoss with loss_metric LPIPS, the CMT reference) calls
lpips.LPIPS(net='vgg') on its 32x32 CIFAR-10 images at their own size, without resizing. An 8x8 digit must be
resized either way: VGG's four max-pools before relu5_3 need a side of at least 16.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CMTError, first_line

# torchvision's VGG16 ("D") features: a number is a 3x3 conv (padding 1) + ReLU, "M" a 2x2 max-pool
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TAPS = (3, 8, 15, 22, 29)  # indices in features of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS v0.1's ScalingLayer
SCALE = (0.458, 0.448, 0.450)
MIN_SIZE = 16  # relu5_3 follows four 2x2 max-pools


def vgg16_features() -> nn.Sequential:
    """torchvision's vgg16().features, layer for layer: conv at 0, 2, 5, 7, ..., 28; max-pool at 4, 9, 16, 23, 30."""
    layers, c = [], 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


def head_key(i: int) -> str:
    return f"lin{i}.model.1.weight"  # NetLinLayer(use_dropout=True): model.0 is the Dropout, model.1 the conv


def _read(path: str, option: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CMTError(f"{option} {path}: no such file (LPIPS weights are read from local files only; "
                       "see docs/training.md for where to get them)")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch's own errors all mean the same here
        raise CMTError(f"{option} {path} is not a readable torch state dict ({first_line(e)})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CMTError(f"{option} {path} is not a state dict of tensors")
    return sd


def _check(sd: dict, expected: dict, path: str, option: str, what: str) -> None:
    """Refuse a file whose keys or shapes differ from `expected` (key -> shape), naming the file and the first
    differences."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {tuple(s)})" for k, s in expected.items()
              if k in sd and tuple(sd[k].shape) != tuple(s)]
    problems = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"] if unexpected
                else []) + ([f"wrong shape {', '.join(shapes[:3])}"] if shapes else [])
    if problems:
        raise CMTError(f"{option} {path} is not {what}: {'; '.join(problems)}")


class LPIPS(nn.Module):
    """Frozen LPIPS v0.1 'vgg': forward(a, b) -> (B,) for images in about [-1, 1] with 1 (repeated to RGB) or 3
    channels, resized to `size` x `size`. Gradients flow to the inputs; the weights never train."""

    def __init__(self, size: int = 224):
        super().__init__()
        if size < MIN_SIZE:
            raise ValueError(f"LPIPS size must be at least {MIN_SIZE} (VGG16's relu5_3 follows four max-pools), "
                             f"got {size}")
        self.size = size
        self.features = vgg16_features()
        self.heads = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg: str, heads: str, size: int = 224) -> "LPIPS":
        """Load a torchvision-format VGG16 state dict (`vgg`, classifier.* ignored) and LPIPS's v0.1 vgg.pth
        (`heads`); a wrong key or shape is a CMTError naming the file."""
        model = cls(size)
        trunk = {f"features.{k}": v.shape for k, v in model.features.state_dict().items()}
        sd = _read(vgg, "--lpips-vgg")
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        _check(sd, trunk, vgg, "--lpips-vgg", "a torchvision VGG16 state dict (vgg16-397923af.pth)")
        hd = _read(heads, "--lpips-heads")
        _check(hd, {head_key(i): (1, c, 1, 1) for i, c in enumerate(CHANNELS)}, heads, "--lpips-heads",
               "LPIPS v0.1 vgg heads (weights/v0.1/vgg.pth)")
        with torch.no_grad():
            model.features.load_state_dict({k[len("features."):]: v for k, v in sd.items()})
            for i, h in enumerate(model.heads):
                h.copy_(hd[head_key(i)])
        return model

    def train(self, mode: bool = True):  # frozen: always in eval mode, whatever a caller's .train() says
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs 1- or 3-channel pixel images (B, C, H, W), got shape {tuple(x.shape)}; "
                             "a latent store's channels are not an image (use --distance l2 or huber)")
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.shift) / self.scale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.prepare(a), self.prepare(b)])  # one pass through the trunk for both
        total, taps = 0.0, iter(self.heads)
        for i, layer in enumerate(self.features[: TAPS[-1] + 1]):
            h = layer(h)
            if i in TAPS:
                # = h / (sqrt(sum_c h^2) + 1e-10); vector_norm's gradient is 0, not NaN, where all channels are 0
                f = h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + 1e-10)
                fa, fb = f.chunk(2)
                total = total + F.conv2d((fa - fb) ** 2, next(taps)).mean((2, 3))
        return total.flatten()
