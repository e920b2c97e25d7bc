"""Are cmt's native EDM networks (networks/songunet.py, networks/adm.py, teachers/precond.py) the published ones?

For each configuration, builds the reference preconditioning + backbone from an unmodified NVlabs/edm clone
(--edm), gives it random weights (every parameter perturbed, so no zero-initialised layer hides a path), copies
its state dict into the native network (strict) and compares, on the same random inputs over noise levels
across the range, the backbone output F and the denoiser D: ||a - b|| / ||b|| and max |a - b| / max |b|, each
required <= 1e-5; it also checks that the native network's own deterministic buffers (resampling filters,
iDDPM's noise levels u) equal the reference's before the copy. Small instances cover DDPM++ / NCSN++ (EDM
train.py presets 'ddpmpp', 'ncsnpp'), SongUNet's 'skip' encoder and decoder, and ADM, with the VP, VE, iDDPM
and EDM preconditionings, conditional and not; the full-size CIFAR-10 DDPM++ network (cifar10 'ddpmpp' preset
with augment_dim 9, ~56 M parameters) is compared too and timed against the reference on the same inputs (CPU,
median of --repeats forward passes, no_grad). Prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/equality_edm.py --edm /work/ref/edm
    python benchmarks/equality_edm.py --edm /work/ref/edm --write-fixture tests/data/edm_reference.safetensors

--write-fixture instead saves the golden file tests/test_native_edm.py checks without the reference code: for
tiny seeded instances, the reference's constructor arguments (safetensors metadata), its state dict (weights
rounded to float16 and stored so; the output is the reference's with those weights), inputs and its output D.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from cmt_pipeline.teachers.native import build_native

TOLERANCE = 1e-5
SIGMA_RANGE = (0.002, 80.0)  # sample i of a batch at the i-th of `batch` log-spaced noise levels over it
DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1])
NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
SONG_SKIP = dict(NCSNPP, encoder_type="skip", decoder_type="skip")
ADM = dict(model_type="DhariwalUNet")
SMALL_SONG = dict(img_resolution=16, img_channels=3, model_channels=32, channel_mult=[1, 2], num_blocks=1,
                  attn_resolutions=[8], dropout=0.1, augment_dim=9)
SMALL_ADM = dict(img_resolution=16, img_channels=3, model_channels=64, channel_mult=[1, 2], num_blocks=1,
                 attn_resolutions=[8], dropout=0.1)  # 64 channels: ADM has one attention head per 64
CIFAR_DDPMPP = dict(DDPMPP, img_resolution=32, img_channels=3, model_channels=128, channel_mult=[2, 2, 2],
                    dropout=0.13, augment_dim=9)
# the golden fixture: tiny enough that the file stays small (ADM below 64 channels has no attention; the
# SongUNets cover it)
TINY = dict(img_resolution=8, img_channels=1, model_channels=4, channel_mult=[1, 2], channel_mult_emb=2, num_blocks=1)


def small_cases():
    for arch, net, size in (("DDPM++", DDPMPP, SMALL_SONG), ("NCSN++", NCSNPP, SMALL_SONG),
                            ("SongUNet skip/skip", SONG_SKIP, SMALL_SONG), ("ADM", ADM, SMALL_ADM)):
        for precond in ("VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond"):
            for label_dim in (0, 10):
                yield f"{arch}, {precond}, {'cond' if label_dim else 'uncond'}", precond, \
                    dict(size, **net, label_dim=label_dim)


def fixture_cases():
    for arch, net, precond, label_dims in (("ddpmpp", DDPMPP, "VPPrecond", (0, 3)),
                                           ("ncsnpp", NCSNPP, "VEPrecond", (0, 3)),
                                           ("adm", ADM, "EDMPrecond", (0, 3)),
                                           ("adm-iddpm", ADM, "iDDPMPrecond", (3,))):
        attn = {"attn_resolutions": [4]} if net is not ADM else {}
        for label_dim in label_dims:
            yield f"{arch}-{'cond' if label_dim else 'uncond'}", precond, dict(TINY, **net, **attn, label_dim=label_dim)


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (matrices ~ 1/sqrt(fan_in), vectors around their init), so every path counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise / math.sqrt(p[0].numel()) if p.ndim > 1 else p + 0.1 * noise)


def build_pair(networks, precond: str, kwargs: dict, seed: int):
    """(reference, native with the reference's weights, whether the native network's own deterministic buffers
    (resampling filters, iDDPM's noise levels u) equal the reference's before the copy)."""
    torch.manual_seed(seed)
    ref = getattr(networks, precond)(**kwargs)
    randomise(ref, seed)
    native = build_native(precond, kwargs)
    ref_state = ref.state_dict()
    own = {k: v for k, v in native.named_buffers() if not k.endswith("freqs")}  # Fourier frequencies: random
    buffers_equal = all(torch.equal(v, ref_state[k]) for k, v in own.items())
    native.load_state_dict(ref_state, strict=True)
    return ref.eval(), native.eval(), buffers_equal


def inputs(kwargs: dict, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.linspace(*map(math.log, SIGMA_RANGE), batch).exp()
    shape = (batch, kwargs["img_channels"], kwargs["img_resolution"], kwargs["img_resolution"])
    x = torch.randn(shape, generator=g) * (sigma**2 + 0.25).sqrt().reshape(-1, 1, 1, 1)
    labels = torch.randint(kwargs["label_dim"], (batch,), generator=g) if kwargs["label_dim"] else None
    return x, sigma, labels


def one_hot(labels, kwargs):
    return None if labels is None else torch.nn.functional.one_hot(labels, kwargs["label_dim"]).float()


def errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(||a - b|| / ||b||, max |a - b| / max |b|), b the reference."""
    d = (a.double() - b.double())
    return float(d.norm() / b.double().norm()), float(d.abs().max() / b.double().abs().max())


@torch.no_grad()
def compare(networks, name: str, precond: str, kwargs: dict, batch: int, seed: int = 0) -> dict:
    ref, native, buffers_equal = build_pair(networks, precond, kwargs, seed)
    x, sigma, labels = inputs(kwargs, batch, seed + 1)
    d_ref, d_nat = ref(x, sigma, one_hot(labels, kwargs)), native(x, sigma, labels)
    # the backbones on the same (scaled input, noise label): D alone hides F where c_out is small
    x_in, c_noise = x / (sigma**2 + 1).sqrt().reshape(-1, 1, 1, 1), sigma.log() / 4
    f_ref = ref.model(x_in, c_noise, class_labels=one_hot(labels, kwargs))
    f_nat = native.model(x_in, c_noise, class_labels=one_hot(labels, kwargs))
    params = sum(p.numel() for p in ref.parameters())
    return {"name": name, "params": params, "F": errors(f_nat, f_ref), "D": errors(d_nat, d_ref),
            "buffers": buffers_equal}


@torch.no_grad()
def timing(networks, kwargs: dict, batch: int, repeats: int) -> dict:
    """Median seconds of a forward pass of each implementation on the same inputs (one warm-up each first)."""
    ref, native, _ = build_pair(networks, "EDMPrecond", kwargs, 0)
    x, sigma, labels = inputs(kwargs, batch, 1)
    out = {}
    for label, run in (("reference", lambda: ref(x, sigma, one_hot(labels, kwargs))),
                       ("native", lambda: native(x, sigma, labels))):
        run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times)
    return out


def write_fixture(networks, path: str) -> None:
    """The golden file: per case, the reference's kwargs (metadata), state dict, inputs and output D."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    with torch.no_grad():
        for i, (name, precond, kwargs) in enumerate(fixture_cases()):
            ref, _, _ = build_pair(networks, precond, kwargs, seed=100 + i)
            # weights on the float16 grid, stored as float16 (half the file) and exact again as float32
            state = {k: v.half() for k, v in ref.state_dict().items()}
            ref.load_state_dict({k: v.float() for k, v in state.items()})
            x, sigma, labels = inputs(kwargs, 3, seed=200 + i)
            meta[name] = json.dumps({"class": precond, "init_kwargs": kwargs})
            tensors.update({f"{name}/state/{k}": v.contiguous() for k, v in state.items()})
            d = ref(x, sigma, one_hot(labels, kwargs))
            tensors.update({f"{name}/x": x, f"{name}/sigma": sigma, f"{name}/D": d})
            if labels is not None:
                tensors[f"{name}/labels"] = labels
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path}: {len(meta)} cases")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edm", required=True, help="an NVlabs/edm clone (imported, never modified)")
    ap.add_argument("--write-fixture", metavar="FILE", help="write the golden fixture instead of comparing")
    ap.add_argument("--full-batch", type=int, default=8, help="batch of the full-size comparison")
    ap.add_argument("--time-batch", type=int, default=64, help="batch of the full-size timing (0: skip timing)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, args.edm)
    from training import networks  # the reference

    if args.write_fixture:
        write_fixture(networks, args.write_fixture)
        return 0
    rows = [compare(networks, *case, batch=7) for case in small_cases()]
    for label_dim in (10, 0):
        name = f"CIFAR-10 DDPM++ full size, EDMPrecond, {'cond' if label_dim else 'uncond'}"
        rows.append(compare(networks, name, "EDMPrecond", dict(CIFAR_DDPMPP, label_dim=label_dim), args.full_batch))
    worst = 0.0
    print("| configuration | parameters | F rel. L2 | F max-abs / max | D rel. L2 | D max-abs / max | fresh buffers |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        worst = max(worst, *r["F"], *r["D"])
        print(f"| {r['name']} | {r['params']:,} | {r['F'][0]:.1e} | {r['F'][1]:.1e} | {r['D'][0]:.1e} | "
              f"{r['D'][1]:.1e} | {'equal' if r['buffers'] else 'DIFFER'} |")
    ok = worst <= TOLERANCE and all(r["buffers"] for r in rows)
    print(f"\nworst relative error {worst:.1e} (tolerance {TOLERANCE:g}), fresh buffers "
          f"{'all equal' if all(r['buffers'] for r in rows) else 'DIFFER'}: {'PASS' if ok else 'FAIL'}")
    if args.time_batch:
        t = timing(networks, dict(CIFAR_DDPMPP, label_dim=10), args.time_batch, args.repeats)
        print(f"\nCIFAR-10 DDPM++ (conditional) forward, batch {args.time_batch}, CPU, "
              f"{torch.get_num_threads()} thread(s), median of {args.repeats}: reference {t['reference']:.2f} s, "
              f"native {t['native']:.2f} s ({t['native'] / t['reference']:.2f}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
