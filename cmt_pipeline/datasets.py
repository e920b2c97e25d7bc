"""Training images for pre-training, all as (N, C, H, W) float32 in [-1, 1] (the EDM data scale, sigma_data 0.5).

`load_images(spec)` takes
- `digits`: scikit-learn's bundled digits, 1797 grey 8x8 images with labels 0-9 (no download needed);
- `gmm:<preset>`: exact samples of a Gaussian-mixture preset (teachers/gmm.py), seeded;
- a folder of images (png/jpg/bmp/gif/webp, searched recursively, all of one size): grey if all are grey, else RGB;
- a .npy array: (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1/3/4; uint8 is scaled from [0, 255],
  floats must already lie in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CMTError
from .memory import check_memory

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor | None  # (N,) int64, or None
    num_classes: int
    description: dict  # recorded with every run trained on it

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def load_images(spec: str, gmm_samples: int = 8192, seed: int = 0) -> ImageData:
    spec = str(spec)
    if spec == "digits":
        data = digits()
    elif spec.startswith("gmm:"):
        data = gmm_samples_of(spec[4:], gmm_samples, seed)
    else:
        path = Path(spec)
        if path.is_dir():
            data = image_folder(path)
        elif path.suffix == ".npy" and path.is_file():
            data = npy_array(path)
        else:
            raise CMTError(f"--data {spec}: not digits, gmm:<preset>, an image folder or an existing .npy file")
    data.description.update(source=spec, num_samples=len(data.images), shape=list(data.shape))
    return data


def digits() -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2 - 1)[:, None]
    return ImageData(images, torch.from_numpy(d.target.astype(np.int64)), 10, {"name": "sklearn-digits"})


def gmm_samples_of(preset: str, n: int, seed: int) -> ImageData:
    from .teachers.gmm import PRESETS

    if preset not in PRESETS:
        raise CMTError(f"unknown Gaussian-mixture preset {preset!r}; choose one of: "
                       + ", ".join(f"gmm:{k}" for k in PRESETS))
    if n < 1:
        raise CMTError(f"gmm_samples must be positive, got {n}")
    gmm = PRESETS[preset]()
    # float64 noise, samples and their gather, the component index, and the float32 copy
    check_memory("--gmm-samples", n, 8 * (3 * math.prod(gmm.shape) + 1) + 4 * math.prod(gmm.shape),
                 "drawing the training set")
    x = gmm.sample(n, torch.Generator().manual_seed(seed)).float()
    return ImageData(x, None, 0, {"name": f"gmm:{preset}", "seed": seed})


def image_folder(path: Path) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CMTError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}")
    imgs = []
    for f in files:
        try:
            with Image.open(f) as im:
                imgs.append(im.copy())
        except (OSError, UnidentifiedImageError) as e:
            raise CMTError(f"cannot read image {f}: {e}; remove or fix it") from e
    sizes = {im.size for im in imgs}
    if len(sizes) > 1:
        odd = next(f for f, im in zip(files, imgs) if im.size != imgs[0].size)
        raise CMTError(f"images under {path} differ in size ({imgs[0].size} for {files[0].name}, "
                       f"{imgs[files.index(odd)].size} for {odd.name}); resize them to one size first")
    grey = all(im.mode in ("1", "L", "LA") for im in imgs)
    arr = np.stack([np.asarray(im.convert("L" if grey else "RGB")) for im in imgs])
    return ImageData(to_unit_range(arr if grey else arr.transpose(0, 3, 1, 2), path), None, 0,
                     {"name": "image-folder"})


def npy_array(path: Path) -> ImageData:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CMTError(f"cannot read {path} as a .npy array: {e}") from e
    if arr.ndim == 4 and arr.shape[1] not in (1, 3, 4) and arr.shape[-1] in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[1] not in (1, 3, 4)) or len(arr) == 0:
        raise CMTError(f"{path} has shape {arr.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C) "
                       "with C = 1, 3 or 4 and N > 0")
    return ImageData(to_unit_range(arr, path), None, 0, {"name": "npy"})


def to_unit_range(arr: np.ndarray, path) -> torch.Tensor:
    """uint8 [0, 255] -> [-1, 1]; floats are checked to be there already. Adds a channel axis to (N, H, W)."""
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 127.5 - 1
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise CMTError(f"{path} contains NaN or infinite values")
        if np.abs(x).max() > 1 + 1e-3:
            raise CMTError(f"{path} holds floats in [{x.min():.3g}, {x.max():.3g}]; scale them to [-1, 1] "
                           "(or save uint8 in [0, 255])")
    else:
        raise CMTError(f"{path} has dtype {arr.dtype}; use uint8 in [0, 255] or floats in [-1, 1]")
    x = torch.from_numpy(np.ascontiguousarray(x))
    return x[:, None] if x.ndim == 3 else x
