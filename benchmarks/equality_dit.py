"""Equality of cmt's DiT / SiT checkpoint reader with the reference code (facebookresearch/DiT, willisma/SiT).

Builds reference models (the clones' own models.py, unmodified) with random weights (every parameter perturbed, so
the zero-initialised adaLN and output layers carry signal), saves each as a checkpoint in both layouts (a bare state
dict named DiT-* / SiT-*, and a training checkpoint {"model", "ema", "opt", "args"} named like train.py's, whose
family only args.model tells), loads them with cmt_pipeline.teachers.dit and compares D(x, sigma, y) with the
reference's forward turned into a denoiser by the reference's own conventions:
    DiT  GaussianDiffusion (create_diffusion): x_t = q_sample(x0, t, noise), pred_xstart of p_mean_variance, at
         integer t; EDM input x = x_t / sqrt(a_t), sigma = sqrt((1 - a_t) / a_t) from its alphas_cumprod.
    SiT  create_transport("Linear", "velocity"): x_t from path_sampler.plan, x1_hat = (x_t - sigma_t * noise_hat)
         / alpha_t with noise_hat = get_noise_from_velocity (in float64, so the reference's division by t adds no
         rounding); EDM input x = x_t / alpha_t, sigma = sigma_t / alpha_t.
The error is max |D - D_ref| / max |D_ref| per sigma; the table shows the worst over the sigmas. Timings: one
forward of the same batch (cmt: D, the network and its EDM wrapper; reference: its network on the same input), best
of 5 run in turn, CPU, in this process's thread count.

    python benchmarks/equality_dit.py --dit /work/ref/DiT --sit /work/ref/SiT [--full]
    python benchmarks/equality_dit.py --dit /work/ref/DiT --sit /work/ref/SiT \
        --write-fixture tests/data/dit_reference.safetensors
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cmt_pipeline.teachers.dit import load_dit_checkpoint

LAYOUTS = ("bare state dict", "training checkpoint")
DIT_STEPS = [0, 1, 10, 100, 250, 500, 750, 999]
SIT_TIMES = [0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999]
CONFIGS = [  # (family, DiT / SiT constructor arguments)
    ("DiT", dict(input_size=16, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=2,
                 num_classes=1000, learn_sigma=True)),
    ("DiT", dict(input_size=8, patch_size=2, in_channels=3, hidden_size=64, depth=2, num_heads=1,
                 num_classes=10, learn_sigma=False)),
    ("DiT", dict(input_size=16, patch_size=4, in_channels=4, hidden_size=64, depth=2, num_heads=1,
                 num_classes=10, learn_sigma=True)),
    ("SiT", dict(input_size=16, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=2,
                 num_classes=1000, learn_sigma=True)),
    ("SiT", dict(input_size=8, patch_size=2, in_channels=3, hidden_size=64, depth=2, num_heads=1,
                 num_classes=10, learn_sigma=False)),
]
FULL = ("DiT", dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                    num_classes=1000, learn_sigma=True))  # DiT-XL/2 at 256 px
FIXTURE = [  # tiny enough for tests/data (weights stored in float16, run in float32)
    ("DiT", dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=1,
                 num_classes=10, learn_sigma=True)),
    ("SiT", dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=1,
                 num_classes=10, learn_sigma=False)),
]


class References:
    """The clones' modules, imported from their folders (their models.py files share a name, so each is loaded
    under its own)."""

    def __init__(self, dit: Path, sit: Path):
        for folder in (dit, sit):
            sys.path.insert(0, str(folder))
        self.models = {name: self._module(f"{name.lower()}_reference_models", folder / "models.py")
                       for name, folder in (("DiT", dit), ("SiT", sit))}
        from diffusion import create_diffusion
        from transport import create_transport

        self.create_diffusion, self.create_transport = create_diffusion, create_transport
        self.commits = {name: git_commit(folder) for name, folder in (("DiT", dit), ("SiT", sit))}

    @staticmethod
    def _module(name, file):
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def build(self, kind: str, cfg: dict, seed: int, scale: float = 0.05) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = getattr(self.models[kind], kind)(**cfg).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name != "pos_embed":
                    p.add_(scale * torch.randn_like(p))
        return model

    def denoise(self, kind: str, model, cfg: dict, level, x0, noise, y):
        """(EDM input x, sigma (B,), reference D) at one noise level: a DiT step index or a SiT time."""
        b = x0.shape[0]
        if kind == "DiT":
            diffusion = self.create_diffusion("", learn_sigma=cfg["learn_sigma"])
            t = torch.full((b,), level, dtype=torch.long)
            x_t = diffusion.q_sample(x0, t, noise)
            ref = diffusion.p_mean_variance(model, x_t, t, clip_denoised=False, model_kwargs={"y": y})["pred_xstart"]
            ac = float(diffusion.alphas_cumprod[level])
            return x_t / ac**0.5, torch.full((b,), ((1 - ac) / ac) ** 0.5), ref
        path = self.create_transport("Linear", "velocity").path_sampler
        t = torch.full((b,), level, dtype=torch.float32)
        _, x_t, _ = path.plan(t, noise, x0)
        v = model(x_t, t, y).double()
        t64, xt64 = t.double(), x_t.double()
        noise_hat = path.get_noise_from_velocity(v, xt64, t64)
        alpha, _ = path.compute_alpha_t(t64.reshape(-1, 1, 1, 1))
        sigma, _ = path.compute_sigma_t(t64.reshape(-1, 1, 1, 1))
        ref = ((xt64 - sigma * noise_hat) / alpha).float()
        return (xt64 / alpha).float(), (sigma / alpha).flatten().float(), ref


def git_commit(folder: Path) -> str:
    return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def save_layouts(kind: str, model, cfg: dict, folder: Path, tag: str, training: bool) -> dict[str, Path]:
    """The model as a bare state dict named like the published files, and (if `training`) as a training checkpoint
    whose "model" holds other weights (so reading "ema" is checked) and whose family only args.model says."""
    bare = folder / f"{kind}-{tag}.pt"
    torch.save(model.state_dict(), bare)
    if not training:
        return {LAYOUTS[0]: bare}
    train = folder / f"{tag}" / "0000100.pt"
    train.parent.mkdir()
    other = {k: v + 1 for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    args = argparse.Namespace(model=f"{kind}-S/2", image_size=cfg["input_size"] * 8,
                              num_classes=cfg["num_classes"], path_type="Linear", prediction="velocity")
    torch.save({"model": other, "ema": model.state_dict(), "opt": opt, "args": args}, train)
    return dict(zip(LAYOUTS, (bare, train)))


def levels(kind: str) -> list:
    return DIT_STEPS if kind == "DiT" else SIT_TIMES


def best_ms(*fns, repeats: int = 5) -> list[float]:
    """Best wall time of each function in milliseconds, run in turn `repeats` times (interleaved, so a machine
    whose load changes meanwhile slows all of them alike)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return [1000 * b for b in best]


@torch.no_grad()
def compare(refs: References, kind: str, cfg: dict, seed: int, batch: int, folder: Path, tag: str,
            training: bool = True) -> dict:
    model = refs.build(kind, cfg, seed)
    files = save_layouts(kind, model, cfg, folder, tag, training)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (batch, cfg["in_channels"], cfg["input_size"], cfg["input_size"])
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    y = torch.randint(0, cfg["num_classes"], (batch,), generator=g)
    cases = [refs.denoise(kind, model, cfg, level, x0, noise, y) for level in levels(kind)]
    errors = {}
    for layout, file in files.items():
        net = None  # a full-size model is ~2.7 GB: hold one loaded copy at a time
        net = load_dit_checkpoint(file).eval()
        errors[layout] = max(float((net(x, s, y) - ref).abs().max() / ref.abs().max()) for x, s, ref in cases)
    x, sigma, _ = cases[len(cases) // 2]  # a mid-range level: cmt's D, and the reference network on its input
    column = sigma.reshape(-1, 1, 1, 1)
    x_in, t = net.param.model_input(x, column), net.param.timestep(column)
    ms_cmt, ms_ref = best_ms(lambda: net(x, sigma, y), lambda: model(x_in, t, y))
    sig = torch.cat([s[:1] for _, s, _ in cases])
    return {"family": kind, "config": arch_name(cfg), "sigmas": f"{sig.min():.3g} .. {sig.max():.3g} ({len(cases)})",
            "errors": errors, "ms_cmt": ms_cmt, "ms_ref": ms_ref, "batch": batch}


def arch_name(cfg: dict) -> str:
    return (f"depth {cfg['depth']}, hidden {cfg['hidden_size']}, patch {cfg['patch_size']}, "
            f"{cfg['in_channels']}x{cfg['input_size']}x{cfg['input_size']}, {cfg['num_classes']} classes, "
            f"learn_sigma {cfg['learn_sigma']}")


@torch.no_grad()
def write_fixture(refs: References, out: Path) -> None:
    """tests/data's golden file: per model its state dict (float16), and per noise level x, sigma, labels and the
    reference D; the configs in the metadata."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for i, (kind, cfg) in enumerate(FIXTURE):
        model = refs.build(kind, cfg, seed=100 + i, scale=0.1)
        with torch.no_grad():  # the fixture stores float16: the reference runs on exactly those weights
            for p in model.parameters():
                p.copy_(p.half().float())
        for k, v in model.state_dict().items():
            tensors[f"{kind}/weights/{k}"] = v.half()
        g = torch.Generator().manual_seed(200 + i)
        shape = (2, cfg["in_channels"], cfg["input_size"], cfg["input_size"])
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        y = torch.randint(0, cfg["num_classes"], (2,), generator=g)
        for j, level in enumerate(levels(kind)):
            x, sigma, ref = refs.denoise(kind, model, cfg, level, x0, noise, y)
            tensors.update({f"{kind}/x/{j}": x, f"{kind}/sigma/{j}": sigma, f"{kind}/D/{j}": ref})
        tensors[f"{kind}/labels"] = y
        meta[kind] = cfg
    meta["reference_commits"] = refs.commits
    save_file(tensors, out, metadata={"configs": json.dumps(meta)})
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


def table(rows: list[dict]) -> str:
    lines = ["| family | config | sigmas (count) | max rel. error of D: bare state dict | training checkpoint | "
             "batch | forward ms, cmt | forward ms, reference |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = [f"{r['errors'][k]:.1e}" if k in r["errors"] else "not run" for k in LAYOUTS]
        lines.append(f"| {r['family']} | {r['config']} | {r['sigmas']} | {err[0]} | {err[1]} | {r['batch']} | "
                     f"{r['ms_cmt']:.1f} | {r['ms_ref']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dit", type=Path, required=True, help="a facebookresearch/DiT clone")
    p.add_argument("--sit", type=Path, required=True, help="a willisma/SiT clone")
    p.add_argument("--full", action="store_true", help="also a full-size DiT-XL/2-256 (~675M parameters, ~6 GB)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--write-fixture", type=Path, help="write the tests' golden file here and stop")
    a = p.parse_args()
    refs = References(a.dit.resolve(), a.sit.resolve())
    if a.write_fixture:
        return write_fixture(refs, a.write_fixture)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, cfg) in enumerate(CONFIGS + ([FULL] if a.full else [])):
            full = i == len(CONFIGS)  # one layout only: a training checkpoint would hold the weights twice
            rows.append(compare(refs, kind, cfg, seed=i, batch=a.batch, folder=Path(tmp), tag=str(i),
                                training=not full))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    worst = max(e for r in rows for e in r["errors"].values())
    text = table(rows)
    print(text)
    print(f"worst relative error {worst:.1e} (bound 1e-5); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); reference commits {refs.commits}")
    if worst > 1e-5:
        raise SystemExit(f"equality FAILED: worst relative error {worst:.1e} > 1e-5")


if __name__ == "__main__":
    main()
