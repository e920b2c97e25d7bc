"""The native EDM2 Precond (cmt_pipeline/teachers/edm2.py) against NVlabs/edm2's own code, run unmodified.

    python benchmarks/equality_edm2.py --edm2 /work/ref/edm2                 # markdown table: errors and CPU timings
    python benchmarks/equality_edm2.py --edm2 /work/ref/edm2 --write-fixture tests/data/edm2_reference.safetensors

Each configuration builds the reference Precond with seeded random weights (the gains, zero at initialisation,
are drawn too: otherwise the U-Net's output is exactly 0 and D = c_skip x hides every difference), loads its state
dict strictly into the native one, and compares D(x, sigma) over sigma in [0.002, 80] in eval mode and in one
training-mode forward and backward (where both write back their normalised weights; the gradients of the mean
square of D are compared too). Exit status 1 when any relative error exceeds 1e-5. --write-fixture instead
stores tiny instances' state dicts, constructor arguments, inputs and reference outputs for
tests/test_native_edm2.py, which then needs no reference code.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cmt_pipeline.teachers.native import build_native  # noqa: E402
import cmt_pipeline.teachers  # noqa: E402,F401  (fills the registry)

SIGMAS = [0.002, 0.02, 0.2, 0.5, 1.0, 5.0, 20.0, 80.0]
TOLERANCE = 1e-5
SMALL = dict(img_resolution=16, img_channels=3, model_channels=32, channel_mult=[1, 2], num_blocks=2,
             attn_resolutions=[8], channels_per_head=16, logvar_channels=32)
CONFIGS = {
    "small-cond": dict(SMALL, label_dim=10),
    "small-uncond": dict(SMALL, label_dim=0, model_channels=64, num_blocks=1, use_fp16=False),
    "img512-xs": dict(img_resolution=64, img_channels=4, label_dim=1000, model_channels=128,
                      channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[16, 8]),
}
# Tiny enough for a < 300 KB fixture, still with attention at both resolutions and a resampling block each way.
TINY = dict(img_resolution=8, img_channels=2, model_channels=6, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[4], channels_per_head=6, logvar_channels=8)
PER_SIGMA = {"img512-xs": 1}  # its forward takes seconds per image on one CPU thread
FIXTURES = {"cond": dict(TINY, label_dim=5), "uncond": dict(TINY, label_dim=0)}


def reference_precond(edm2: str, kwargs: dict, seed: int):
    """NVlabs/edm2's Precond with seeded random weights and gains."""
    sys.path.insert(0, edm2)
    from training.networks_edm2 import Precond

    torch.manual_seed(seed)
    net = Precond(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:  # emb_gain / out_gain: zero at init
                p.uniform_(0.5, 1.5)
    return net.eval().requires_grad_(False)


def inputs(kwargs: dict, per_sigma: int, seed: int):
    """Noisy inputs x = y + sigma n at every sigma in SIGMAS, with integer labels (None when unconditional)."""
    g = torch.Generator().manual_seed(seed)
    c, r, n = kwargs["img_channels"], kwargs["img_resolution"], per_sigma * len(SIGMAS)
    sigma = torch.tensor(SIGMAS).repeat_interleave(per_sigma)
    x = 0.5 * torch.randn(n, c, r, r, generator=g) + sigma[:, None, None, None] * torch.randn(n, c, r, r, generator=g)
    labels = torch.randint(0, kwargs["label_dim"], (n,), generator=g) if kwargs["label_dim"] else None
    return x, sigma, labels


def run_reference(ref, x, sigma, labels):
    onehot = None if labels is None else torch.nn.functional.one_hot(labels, ref.label_dim).float()
    return ref(x, sigma, onehot)


def errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(||a - b|| / ||b||, max |a - b|), the worst over the sigmas for the relative error."""
    rel = max(float((ai - bi).norm() / bi.norm()) for ai, bi in zip(a.split(len(a) // len(SIGMAS)),
                                                                    b.split(len(b) // len(SIGMAS))))
    return rel, float((a - b).abs().max())


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def compare(edm2: str, name: str, kwargs: dict, per_sigma: int, repeats: int) -> dict:
    ref = reference_precond(edm2, kwargs, seed=0)
    native = build_native("Precond", kwargs)
    native.load_state_dict(ref.state_dict(), strict=True)
    native.eval().requires_grad_(False)
    x, sigma, labels = inputs(kwargs, per_sigma, seed=1)
    rel, mx = errors(native(x, sigma, labels), run_reference(ref, x, sigma, labels))

    ref_t, native_t = (copy.deepcopy(net).train().requires_grad_(True) for net in (ref, native))
    with torch.enable_grad():
        out_n, out_r = native_t(x, sigma, labels), run_reference(ref_t, x, sigma, labels)
        out_n.square().mean().backward()
        out_r.square().mean().backward()
    rel_train, _ = errors(out_n.detach(), out_r.detach())
    ref_w, native_w = ref_t.state_dict(), native_t.state_dict()
    weights = max(float((native_w[k] - ref_w[k]).abs().max()) for k in ref_w)  # forced normalisation wrote both
    ref_p = dict(ref_t.named_parameters())
    grad = max(float((p.grad - ref_p[k].grad).norm() / ref_p[k].grad.norm().clamp_min(1e-30))
               if ref_p[k].grad is not None else 0.0 if p.grad is None else float("inf")  # the unused logvar head
               for k, p in native_t.named_parameters())

    t_ref = median_seconds(lambda: run_reference(ref, x, sigma, labels), repeats)
    t_nat = median_seconds(lambda: native(x, sigma, labels), repeats)
    params = sum(p.numel() for p in native.parameters())
    return dict(name=name, params=params, batch=len(x), rel=rel, max_abs=mx, rel_train=rel_train,
                weights_train=weights, grad_train=grad, t_ref=t_ref, t_native=t_nat)


def write_fixture(edm2: str, path: Path) -> None:
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for name, kwargs in FIXTURES.items():
        ref = reference_precond(edm2, kwargs, seed=0)
        x, sigma, labels = inputs(kwargs, per_sigma=1, seed=1)
        with torch.no_grad():
            out = run_reference(ref, x, sigma, labels)
        tensors.update({f"{name}/state/{k}": v.contiguous() for k, v in ref.state_dict().items()})
        tensors.update({f"{name}/x": x, f"{name}/sigma": sigma, f"{name}/out": out})
        if labels is not None:
            tensors[f"{name}/labels"] = labels
        meta[name] = json.dumps(kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB): {', '.join(FIXTURES)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edm2", required=True, help="a clone of github.com/NVlabs/edm2 (imported, not modified)")
    ap.add_argument("--write-fixture", type=Path, help="write the test fixture here instead of comparing")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--per-sigma", type=int, default=2, help="inputs per noise level (img512-xs: 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed forward passes (median reported)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.write_fixture:
        write_fixture(args.edm2, args.write_fixture)
        return 0
    print(f"sigmas {SIGMAS}; CPU, {torch.get_num_threads()} thread, torch {torch.__version__}\n")
    print("| config | parameters | batch | eval: max rel. error | eval: max abs. error | train mode: max rel. error "
          "| train mode: weights max abs. diff. | train mode: gradients max rel. error | reference forward (s) "
          "| native forward (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name in args.configs.split(","):
        r = compare(args.edm2, name, CONFIGS[name], PER_SIGMA.get(name, args.per_sigma), args.repeats)
        worst = max(worst, r["rel"], r["rel_train"], r["grad_train"])
        print(f"| {name} | {r['params']:,} | {r['batch']} | {r['rel']:.1e} | {r['max_abs']:.1e} | {r['rel_train']:.1e} "
              f"| {r['weights_train']:.1e} | {r['grad_train']:.1e} | {r['t_ref']:.3f} | {r['t_native']:.3f} |",
              flush=True)
    ok = worst <= TOLERANCE
    print(f"\nworst relative error {worst:.1e}: {'within' if ok else 'ABOVE'} the tolerance {TOLERANCE:g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
