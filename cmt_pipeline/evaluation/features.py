"""The digits feature network: a small CNN classifier on scikit-learn's 8x8 digits, trained by this file.

Inception features mean nothing on 8x8 grey digits, and nothing may be downloaded, so the offline quality
metric for the built-in example is a Frechet distance in the penultimate layer (64 features) of this
classifier. The shipped weights (assets/digits-classifier/) are reproduced by
    cmt train-classifier --out cmt_pipeline/assets/digits-classifier
with a fixed seed and a fixed stratified held-out split (20%, random_state 0).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..datasets import digits
from ..errors import CMTError
from ..files import atomic_write_json
from .frechet import feature_stats, frechet_distance
from .kid import kernel_distance

CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits-classifier"
WEIGHTS = "model.safetensors"
CARD = "config.json"
HOLDOUT_FRACTION, SPLIT_SEED = 0.2, 0


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits as (N, 1, 8, 8) float32 in [-1, 1] (the teachers' data scale) and labels."""
    d = digits()
    return d.images.numpy(), d.labels.numpy()


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified train / held-out split of the 1797 digits."""
    from sklearn.model_selection import train_test_split

    _, y = real_digits()
    return train_test_split(np.arange(len(y)), test_size=HOLDOUT_FRACTION, stratify=y, random_state=SPLIT_SEED)


class DigitsClassifier(nn.Module):
    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim}
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
            nn.Flatten(), nn.Linear(8 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations: the space the digits FD is measured in."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def shift_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translations of up to one pixel (zero = background padding), so features do not hinge on exact
    placement: generated digits are not pixel-aligned copies of the training set."""
    pad = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2,), generator=g).tolist()
    return pad[:, :, dy:dy + 8, dx:dx + 8]


def train_classifier(seed: int = 0, epochs: int = 60, batch_size: int = 64, lr: float = 2e-3,
                     progress: bool = True) -> tuple[DigitsClassifier, dict]:
    """Train on the fixed 80% split; return the model and its card (held-out accuracy, settings, time)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, labels = real_digits()
    train, held = split_indices()
    x, y = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    for _ in tqdm(range(epochs), desc="classifier", disable=not progress):
        perm = torch.randperm(len(x), generator=g)
        for b in range(0, len(x), batch_size):
            idx = perm[b:b + batch_size]
            loss = nn.functional.cross_entropy(model(shift_augment(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    card = {**model.config, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "split": {"holdout_fraction": HOLDOUT_FRACTION, "random_state": SPLIT_SEED, "stratified": True,
                      "train": len(train), "held_out": len(held)},
            "heldout_accuracy": heldout_accuracy(model), "train_seconds": round(time.perf_counter() - t0, 1)}
    return model, card


@torch.no_grad()
def heldout_accuracy(model: DigitsClassifier) -> float:
    images, labels = real_digits()
    _, held = split_indices()
    pred = model(torch.from_numpy(images[held])).argmax(1).numpy()
    return float((pred == labels[held]).mean())


def check_classifier_out(path) -> None:
    """A classifier is written into a new or empty folder, or over a previous one; never among other files (where
    its config.json would replace a run's)."""
    path = Path(path)
    if path.is_dir() and {p.name for p in path.iterdir()} - {WEIGHTS, CARD, "README.md"}:
        raise CMTError(f"--out {path} holds other files than a classifier's ({WEIGHTS}, {CARD}, README.md); choose "
                       "a new or empty --out")


def save_classifier(model: DigitsClassifier, card: dict, path) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    check_classifier_out(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHTS))
    atomic_write_json(path / CARD, card)


def load_classifier(path=CLASSIFIER_DIR, device="cpu") -> DigitsClassifier:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CARD).exists():  # the card is written last
        raise CMTError(f"no digits classifier in {path}; reinstall the package or rebuild it with "
                       "`cmt train-classifier --out <dir>`")
    card = json.loads((path / CARD).read_text())
    model = DigitsClassifier(card["width"], card["feature_dim"])
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    return model.to(device).eval().requires_grad_(False)


class DigitsFD:
    """Frechet distance (and KID) of generated digits to the real digits (all 1797), in classifier features.

    The reference set is the built-in teacher's own training set: a generator that reproduced training digits
    would score as well as the real data does, so these metrics measure closeness to the teacher's data, not
    generalisation."""

    shape = (1, 8, 8)

    def __init__(self, device="cpu", path=CLASSIFIER_DIR):
        self.device = torch.device(device)
        self.model = load_classifier(path, self.device)
        self.real = self.features(real_digits()[0])
        self.real_stats = feature_stats(self.real)

    @torch.no_grad()
    def features(self, images, batch_size: int = 1024) -> np.ndarray:
        x = torch.as_tensor(images, dtype=torch.float32)
        if tuple(x.shape[1:]) != self.shape:
            raise CMTError(f"the digits FD needs (N, 1, 8, 8) samples, got {tuple(x.shape)}")
        return np.concatenate([self.model.features(x[i:i + batch_size].to(self.device)).cpu().double().numpy()
                               for i in range(0, len(x), batch_size)])

    def __call__(self, images) -> float:
        """FD of `images` (N, 1, 8, 8 in [-1, 1]) against all real digits."""
        return frechet_distance(*feature_stats(self.features(images)), *self.real_stats)

    def noise_floor(self, seed: int = 0) -> float:
        """FD between two disjoint random halves of the real digits (898 vs 899): what sampling noise alone
        gives at that sample size, the scale against which a generator's FD is judged."""
        perm = np.random.default_rng(seed).permutation(len(self.real))
        half = len(perm) // 2
        return frechet_distance(*feature_stats(self.real[perm[:half]]), *feature_stats(self.real[perm[half:]]))

    def metrics(self, images, seed: int = 0) -> dict:
        """FD and KID of `images` against all real digits, and the FD floor for the halves split `seed`."""
        f = self.features(images)
        return {"digits_fd": frechet_distance(*feature_stats(f), *self.real_stats),
                "digits_kid": kernel_distance(f, self.real), "digits_fd_floor": self.noise_floor(seed)}
