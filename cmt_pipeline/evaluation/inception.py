"""FID's Inception-v3 (the 2015-12-05 TensorFlow graph), written here so FID works without torchvision or a download.

Loads the converted state dict that pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`), torch-fidelity and
torchmetrics (`weights-inception-2015-12-05-6726825d.pth`) use: module and parameter names follow theirs
(Conv2d_1a_3x3.conv.weight, Mixed_5b.branch_pool.bn.running_var, ..., fc), so the file loads unchanged.
The FID variant differs from the ImageNet classifier: average pools exclude padding, and the last block
max-pools its pool branch. Inputs follow torch-fidelity/torchmetrics: images quantised to 8 bits, resized to
299x299 with TensorFlow 1.x bilinear sampling (no half-pixel offset), scaled by (x - 128) / 128; grey images
are repeated to three channels. Features: the 2048-d global average pool ("pool3").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CMTError

SIZE = 299


class Conv(nn.Module):
    """Conv (no bias) + BatchNorm(eps 1e-3) + ReLU: the unit every Inception block is made of."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool(x):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class BlockA(nn.Module):  # Mixed_5b/c/d
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(avg_pool(x))], 1)


class BlockB(nn.Module):  # Mixed_6a: grid reduction 35 -> 17
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class BlockC(nn.Module):  # Mixed_6b..e: factorised 7x7
    def __init__(self, cin, c7):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, 1), Conv(c7, c7, **row), Conv(c7, 192, **col)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, 1), Conv(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = Conv(c7, c7, **row), Conv(c7, c7, **col)
        self.branch7x7dbl_5 = Conv(c7, 192, **row)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), dbl,
                          self.branch_pool(avg_pool(x))], 1)


class BlockD(nn.Module):  # Mixed_7a: grid reduction 17 -> 8
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):  # Mixed_7b (average pool) and Mixed_7c (max pool, as in the FID graph)
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), padding=(0, 1)), Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # logits of the 2015 graph; unused for FID, present in the weights file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 299, 299) scaled to [-1, 1] -> (N, 2048) pool3 features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def resize_tf1(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x does it (source = output index * in/out, no half-pixel centre),
    written as two small interpolation matrices so it is exact and cheap for tiny inputs."""

    def matrix(n_in):
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        w = (src - lo).unsqueeze(1)
        eye = torch.eye(n_in, dtype=torch.float64)
        return ((1 - w) * eye[lo] + w * eye[hi]).to(x)

    return torch.einsum("yh,nchw,xw->ncyx", matrix(x.shape[2]), x, matrix(x.shape[3]))


def load_inception(path, device="cpu") -> FIDInceptionV3:
    """The FID network with weights from a local file; never downloads. One-line CMTError on a bad file."""
    fix = ("pass the pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or weights-inception-2015-12-05-6726825d.pth "
           "(torch-fidelity/torchmetrics) file")
    path = Path(path)
    if not path.is_file():
        raise CMTError(f"--inception-weights {path} does not exist; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many types; all mean "not a state dict file"
        raise CMTError(f"--inception-weights {path} is not a readable torch state dict ({type(e).__name__}); {fix}") from e
    model = FIDInceptionV3()
    if not isinstance(state, dict):
        raise CMTError(f"--inception-weights {path} holds a {type(state).__name__}, not a state dict; {fix}")
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: getattr(v, "shape", None) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k] or ()))
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise CMTError(f"--inception-weights {path} is not the FID Inception-v3 state dict ({len(missing)} missing, "
                       f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors, e.g. {first}); {fix}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, C, H, W) samples in [-1, 1], C = 1 or 3 -> (N, 2048) float64 features, inputs prepared as above."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise CMTError(f"FID needs (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(images), batch_size):
        x = images[b:b + batch_size].to(device, torch.float32)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round()  # the 8-bit image the reference tools are fed
        x = resize_tf1(x.expand(-1, 3, -1, -1))
        out.append(model((x - 128) / 128).double().cpu())
    return torch.cat(out)
