"""How smoothly does a network's output change with its noise level? Continuous-time post-training differentiates the
student along sigma (ECT's (f(x_t, t) - f(x_r, r)) / (t - r) with r within 0.1% of t at q = 4096; MeanFlow's JVP),
while mid-training only ever shows it the store's 16 grid sigmas. Structure in sigma finer than the grid is invisible
to mid-training and dominates those derivatives.

For each network and noise level t, on x = x0 + t eps (x0 real digits): the mean per-sample norm of
(f(x, t (1 + d)) - f(x, t)) / d for relative steps d from 1e-5 to 0.1, i.e. the slope of f in log sigma measured
over a step d. A smooth f gives the same slope for every small d; `wiggle` = slope at d = 1e-4 over slope at
d = 0.1 is 1 for a function that is linear in log sigma on that scale and grows with structure finer than 10%.
Writes OUT.json and its section of docs/results.md (`<!-- sigma-smoothness:<section> -->`).

    python benchmarks/studies/sigma_smoothness.py --nets builtin,runs/digits/mid/model.ckpt,runs/digits/post/model.ckpt
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from cmt_pipeline.datasets import load_images
from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.models.io import open_network
from cmt_pipeline.files import atomic_write_json

STEPS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
LEVELS = (0.3, 1.0, 5.0, 20.0)


def slopes(net, x0: torch.Tensor, t: float, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    x = x0 + t * torch.randn(x0.shape, generator=g)
    n = len(x)
    with torch.no_grad():
        f0 = net(x, torch.full((n,), t))
        return [float((net(x, torch.full((n,), t * (1 + d))) - f0).flatten(1).norm(dim=1).mean() / d) for d in STEPS]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", required=True, help="comma-separated: model.ckpt files (CM students), network folders "
                                                 "or builtin (the teacher's denoiser)")
    p.add_argument("--labels", default="", help="comma-separated names for the table (default: the specs)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--section", default="digits")
    p.add_argument("--out", default="runs/sigma-smoothness")
    p.add_argument("--doc", default="docs/results.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    specs = args.nets.split(",")
    labels = args.labels.split(",") if args.labels else specs
    if len(labels) != len(specs):
        raise SystemExit(f"--labels names {len(labels)} networks, --nets gives {len(specs)}")
    x0 = load_images("digits", seed=0).images[: args.samples].float()
    results = {}
    for spec, label in zip(specs, labels):
        net = open_network(spec).module.eval()
        results[label] = {str(t): slopes(net, x0, t) for t in LEVELS}
        print(label, results[label], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out + f"-{args.section}.json"), {"steps": STEPS, "results": results})
    head = " | ".join(f"slope, d = {d:g}" for d in STEPS)
    lines = [f"## Smoothness in sigma: teacher and students ({args.section})", "",
             f"Mean over {args.samples} real digits x0 (x = x0 + t eps, one noise draw) of |f(x, t (1 + d)) - f(x, t)| "
             "/ d, the network's slope in log sigma measured over a relative step d; wiggle = slope at d = 1e-4 / "
             "slope at d = 0.1 (1: smooth on the 10% scale).", "",
             f"| network | t | {head} | wiggle |", "|---" * (len(STEPS) + 3) + "|"]
    for label, rows in results.items():
        for t, s in rows.items():
            lines.append(f"| {label} | {t} | " + " | ".join(f"{v:.3g}" for v in s) + f" | {s[1] / s[-1]:.2f} |")
    lines += ["", "Command: `" + " ".join(["python"] + [shlex.quote(a) for a in sys.argv]) + "`."]
    write_section(args.doc, f"sigma-smoothness:{args.section}", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
