"""Do real NVlabs snapshots load through cmt's safe reader (networks/snapshot.py) into the same denoiser?

For each configuration, a child process with an unmodified NVlabs/edm or NVlabs/edm2 clone on sys.path builds the
reference preconditioning + backbone (random weights everywhere), pickles it exactly as the reference's training
loop does (EDM: {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'} with copy.deepcopy(...).eval()
.requires_grad_(False).cpu(); EDM2: EasyDict(encoder, dataset_kwargs, loss_fn, ema) with ema in float16), and
records the reference's D(x, sigma, labels) on fixed inputs. This process, which never has the reference code
on its path, reads each snapshot with `load_snapshot` and compares its weights (bitwise, the reader's part) and its D:
max |a - b| / max |b| and ||a - b|| / ||b|| (the native networks' part; EDM2: the reference run in float32 from the
same float16 weights). Prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/snapshot_check.py --edm /work/ref/edm --edm2 /work/ref/edm2 [--full]

--full adds the full-size CIFAR-10 DDPM++ network of edm-cifar10-32x32-cond-vp.pkl (EDMPrecond, ~56 M
parameters) and EDM2's img512-xs network (~125 M), with the reader's time.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import equality_edm as edm_cases  # noqa: E402  (configurations, inputs and error measures shared with it)
import equality_edm2 as edm2_cases  # noqa: E402

TOLERANCE = 1e-5


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the state dict's names and float32 values (EDM2's float16 snapshot weights convert exactly)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def edm_configs(full: bool):
    yield from ((name, precond, kwargs) for name, precond, kwargs in edm_cases.small_cases()
                if "skip" not in name)
    if full:
        yield "edm-cifar10-32x32-cond-vp (full)", "EDMPrecond", dict(edm_cases.CIFAR_DDPMPP, label_dim=10)


def edm2_configs(full: bool):
    for name in ("small-cond", "small-uncond"):
        yield name, "Precond", edm2_cases.CONFIGS[name]
    if full:
        yield "img512-xs (full)", "Precond", edm2_cases.CONFIGS["img512-xs"]


def make_edm(ref: str, folder: Path, full: bool) -> list:
    """Child: EDM snapshots as training/training_loop.py writes them, and the reference's outputs."""
    sys.path.insert(0, ref)
    import dnnlib
    from training import networks
    from training.augment import AugmentPipe
    from training.loss import EDMLoss

    out = []
    for i, (name, precond, kwargs) in enumerate(edm_configs(full)):
        torch.manual_seed(i)
        net = getattr(networks, precond)(**kwargs)
        edm_cases.randomise(net, i)
        data = dict(ema=net, loss_fn=EDMLoss(), augment_pipe=AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1),
                    dataset_kwargs=dict(dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                        path="datasets/x.zip", use_labels=bool(kwargs["label_dim"]))))
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
        path = folder / f"edm-{i:02d}.pkl"
        with open(path, "wb") as f:
            pickle.dump(data, f)
        x, sigma, labels = edm_cases.inputs(kwargs, 8, i)
        with torch.no_grad():
            d = data["ema"](x, sigma, edm_cases.one_hot(labels, kwargs)).float()
        out.append(dict(name=f"EDM {name}", path=str(path), x=x, sigma=sigma, labels=labels, d=d,
                        weights=weights_digest(data["ema"])))
    return out


def make_edm2(ref: str, folder: Path, full: bool) -> list:
    """Child: EDM2 snapshots as training/training_loop.py writes them, and the reference's outputs in float32."""
    sys.path.insert(0, ref)
    import dnnlib
    from training.encoders import StabilityVAEEncoder, StandardRGBEncoder
    from training.training_loop import EDM2Loss

    out = []
    for i, (name, _, kwargs) in enumerate(edm2_configs(full)):
        net = edm2_cases.reference_precond(ref, kwargs, i)
        encoder = StabilityVAEEncoder() if kwargs["img_channels"] == 4 else StandardRGBEncoder()
        data = dnnlib.EasyDict(encoder=encoder, loss_fn=EDM2Loss(),
                               dataset_kwargs=dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset"))
        data.ema = copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float16)
        path = folder / f"edm2-{i:02d}.pkl"
        with open(path, "wb") as f:
            pickle.dump(data, f)
        x, sigma, labels = edm2_cases.inputs(kwargs, edm2_cases.PER_SIGMA.get(name.split()[0], 1), i)
        with torch.no_grad():
            d = edm2_cases.run_reference(copy.deepcopy(data.ema).to(torch.float32), x, sigma, labels).float()
        out.append(dict(name=f"EDM2 {name}", path=str(path), x=x, sigma=sigma, labels=labels, d=d,
                        weights=weights_digest(data.ema)))
    return out


def check(case: dict) -> dict:
    from cmt_pipeline.teachers.native import load_snapshot

    start = time.perf_counter()
    net = load_snapshot(case["path"]).eval()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        d = net(case["x"], case["sigma"], case["labels"]).float()
    rel, max_rel = edm_cases.errors(d, case["d"])
    return dict(name=case["name"], reference=net.reference, architecture=net.source["architecture"],
                params=sum(p.numel() for p in net.parameters()), mb=Path(case["path"]).stat().st_size / 2**20,
                seconds=seconds, rel=rel, max_rel=max_rel, latents=bool(net.latents),
                same_weights=weights_digest(net) == case["weights"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm", help="an NVlabs/edm clone")
    parser.add_argument("--edm2", help="an NVlabs/edm2 clone")
    parser.add_argument("--full", action="store_true", help="add the full-size networks")
    parser.add_argument("--child", choices=("edm", "edm2"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        make = make_edm if args.child == "edm" else make_edm2
        ref = args.edm if args.child == "edm" else args.edm2
        torch.save(make(ref, Path(args.folder), args.full), Path(args.folder) / f"{args.child}.pt")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="snapshot-check-") as folder:
        for family in ("edm", "edm2"):
            if getattr(args, family) is None:
                continue
            subprocess.run([sys.executable, __file__, "--child", family, "--folder", folder, f"--{family}",
                            getattr(args, family)] + ["--full"] * args.full, check=True)
            assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
            rows += [check(case) for case in torch.load(Path(folder) / f"{family}.pt", weights_only=True)]
        assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules  # the reader imported neither
    print("| snapshot | preconditioning | backbone | parameters | file MiB | read s | weights bitwise equal | max rel "
          "| rel L2 | ok |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['name']}{' (latent)' if r['latents'] else ''} | {r['reference']} | {r['architecture']} | "
              f"{r['params']:,} | {r['mb']:.1f} | {r['seconds']:.2f} | {'yes' if r['same_weights'] else 'NO'} | "
              f"{r['max_rel']:.1e} | {r['rel']:.1e} | {'yes' if ok(r) else 'NO'} |")
    return 0 if all(map(ok, rows)) else 1


def ok(row: dict) -> bool:
    return row["same_weights"] and row["max_rel"] <= TOLERANCE


if __name__ == "__main__":
    sys.exit(main())
