"""Why short ECT post-training hurts a CMT student: the signal-to-noise ratio of ECT's gradient at each init.

ECT's target f(x0 + r n, r) steps along the single noise sample n, not along the ODE's E[n | x_t]; the difference
is zero-mean noise whose size does not shrink as the student improves, while the mean gradient (the student's
real inconsistency) does. A student that already matches its teacher's flow map (CMT) therefore sees mostly
noise. This measures it: for K batches at the init, per-batch gradients g_k of the post-training objective;
signal = ||E g|| (the mean's norm, corrected for the noise it still holds: ||mean g||^2 - tr(Cov)/K), noise =
sqrt(tr Cov) (one batch's deviation from the mean). SNR = signal / noise per batch: a step is more noise than
signal when SNR < 1, and about 1/SNR^2 steps are needed before the noise averages below the signal.

    python benchmarks/studies/ect_gradient_snr.py --part gmm --init runs/ect-ablation/gmm-cmt/mid/model.ckpt \\
        --diffusion runs/ect-ablation/gmm-cmt/teacher/model.ckpt
    python benchmarks/studies/ect_gradient_snr.py --part digits --init runs/digits/mid/model.ckpt --diffusion builtin

Writes OUT.json and its section of docs/results.md (`<!-- ect-gradient-snr:<part> -->`).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
from pathlib import Path

import torch

from cmt_pipeline.config import PostTrainConfig
from cmt_pipeline.datasets import load_images
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.training.data import TensorSource
from cmt_pipeline.training.posttrain import build_objective, build_student, validate
from cmt_pipeline.files import atomic_write_json

SETTINGS = {"norm, q 4096 (reference)": dict(distance="norm", q=4096.0),
            "norm, q 256": dict(distance="norm", q=256.0),
            "l2, q 256": dict(distance="l2", q=256.0),
            "l2, q 16": dict(distance="l2", q=16.0)}


def gradient_snr(init: str, data: str, setting: dict, batches: int, batch: int, seed: int = 0) -> dict:
    cfg = validate(PostTrainConfig(init=init, data=data, batch_size=batch, seed=seed, gmm_samples=8192,
                                   device="cpu", **setting))
    images = load_images(cfg.data, cfg.gmm_samples, cfg.seed)
    torch.manual_seed(seed)
    student, origin = build_student(cfg, images.shape)
    objective = build_objective(cfg, student)
    source = TensorSource({"image": images.images}, batch, seed)
    params = [p for p in student.parameters() if p.requires_grad]
    grads, losses = [], []
    for k, b in zip(range(batches), source.batches(0)):
        torch.manual_seed(1000 + k)
        student.zero_grad(set_to_none=True)
        loss, _ = objective(student, b, 0)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]).double())
        losses.append(float(loss.detach()))
    g = torch.stack(grads)
    mean = g.mean(0)
    noise2 = float(((g - mean) ** 2).sum(1).mean()) * batches / (batches - 1)  # tr Cov of one batch's gradient
    signal2 = max(float(mean.square().sum()) - noise2 / batches, 0.0)
    return {"origin": origin, "signal": math.sqrt(signal2), "noise": math.sqrt(noise2),
            "snr": math.sqrt(signal2 / noise2), "loss": sum(losses) / len(losses)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=["gmm", "digits"], required=True)
    p.add_argument("--init", required=True, help="the CMT student: a mid-cm model.ckpt")
    p.add_argument("--diffusion", required=True, help="the diffusion teacher: pretrain model.ckpt or builtin")
    p.add_argument("--batches", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default="runs/ect-gradient-snr")
    p.add_argument("--doc", default="docs/results.md")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = "gmm:gmm8x8" if args.part == "gmm" else "digits"
    inits = {"CMT": args.init, "diffusion": args.diffusion, "random": "random"}
    results = {}
    for (name, init), (label, setting) in itertools.product(inits.items(), SETTINGS.items()):
        arch = {"arch": args.diffusion} if init == "random" else {}  # the teacher's architecture, fresh weights
        results[f"{name} | {label}"] = r = gradient_snr(init, data, {**setting, **arch}, args.batches, args.batch)
        print(f"{name:10s} {label:28s} signal {r['signal']:.4g} noise {r['noise']:.4g} SNR {r['snr']:.3g}",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out + f"-{args.part}.json"), results)
    lines = [f"## Why short ECT hurts a CMT student: gradient signal-to-noise at the init ({args.part})", "",
             f"ECT's gradient at each init over {args.batches} batches of {args.batch} ({data}): signal = the "
             "norm of the mean gradient (noise-corrected), noise = one batch's deviation from it, SNR = their "
             "ratio (`benchmarks/studies/ect_gradient_snr.py`).", "",
             "| init | setting | signal | noise | SNR per batch |", "|---|---|---|---|---|"]
    for key, r in results.items():
        name, label = key.split(" | ")
        lines.append(f"| {name} | {label} | {r['signal']:.3g} | {r['noise']:.3g} | {r['snr']:.3g} |")
    lines += ["", "Command: `" + " ".join(["python"] + [shlex.quote(a) for a in sys.argv]) + "`."]
    write_section(args.doc, f"ect-gradient-snr:{args.part}", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
