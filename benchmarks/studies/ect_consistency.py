"""Where ECT spends its effort on a CMT student (gmm:gmm8x8, issue 12): the consistency loss ECT minimises against
the error it is meant to lower, per noise level, for the exact flow map and for students before and after ECT.

At each t of --ts, on --samples noised exact mixture samples x_t = x0 + t eps (the same for every student) and
r = ECT's r(t) at q 4096:
  loss    = mean over samples of sum((f(x_t, t) - f(x_r, r))^2) / (t - r)   (ECT's l2 loss at q 4096),
  t-only  = the same with x_t in both calls (f(x_t, t) - f(x_t, r)): the part that comes from f's change in sigma
            alone, not from moving x,
  error   = mean squared difference from the exact flow map at (x_t, t) (dpm3 x 1024 on the analytic mixture).
The exact flow map is scored by the same loss (its own, from the same solves). Students run in training mode, as
ECT sees them. Writes the section `<!-- ect-consistency:gmm -->` of --doc.

    python benchmarks/studies/ect_ablation.py --part gmm --out runs/ect-ablation ...     # the students (finished runs)
    python benchmarks/studies/ect_consistency.py --ablation runs/ect-ablation
    python benchmarks/studies/ect_consistency.py --student "LABEL=RUN/model.ckpt" ... --section ect-consistency:gmm-ts1
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from cmt_pipeline.docs_sections import write_section
from cmt_pipeline.evaluation.metrics import exact_flow_map
from cmt_pipeline.models.io import load_model, model_from_checkpoint
from cmt_pipeline.objectives.ect import ect_r
from cmt_pipeline.teachers.gmm import gmm8x8

ROOT = Path(__file__).resolve().parents[2]
Q = 4096.0
STUDENTS = {  # name -> run folder under --ablation (benchmarks/studies/ect_ablation.py's layout)
    "CMT, 400 mid steps (the init)": "gmm-cmt/mid",
    "+ ECT 400, base (reference)": "gmm/base_(reference)-seed0",
    "+ ECT 400, warm-up + lr / 10": "gmm/warm-up_+_lr__10-seed0",
    "+ ECT 400, gmm-post.toml recipe": "gmm/mid400_gmm-post.toml_recipe-seed0",
}


def measure(students: dict, ts: list[float], n: int, seed: int) -> dict:
    gmm = gmm8x8()
    gen = torch.Generator().manual_seed(seed)
    rows = {name: [] for name in ["exact flow map"] + list(students)}
    for t in ts:
        x0 = gmm.sample(n, gen).view(n, 1, 8, 8)
        eps = torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64)
        r = ect_r(torch.tensor(t, dtype=torch.float64), Q).item()
        xt, xr = x0 + t * eps, x0 + r * eps
        exact_t = torch.as_tensor(exact_flow_map(gmm, (xt / t).numpy(), t)).view_as(xt)
        exact_r = torch.as_tensor(exact_flow_map(gmm, (xr / r).numpy(), r)).view_as(xt)
        loss = lambda a, b: ((a - b) ** 2).flatten(1).sum(1).mean().item() / (t - r)  # noqa: E731
        rows["exact flow map"].append({"t": t, "loss": loss(exact_t, exact_r), "t_only": None, "error": 0.0})
        T, R = torch.full((n,), t), torch.full((n,), r)
        for name, model in students.items():
            with torch.no_grad():
                ft = model(xt.float(), T, None).double()
                rows[name].append({"t": t, "loss": loss(ft, model(xr.float(), R, None).double()),
                                   "t_only": loss(ft, model(xt.float(), R, None).double()),
                                   "error": ((ft - exact_t) ** 2).mean().item()})
        print(f"t = {t}: " + "; ".join(f"{k} {v[-1]['loss']:.4f}" for k, v in rows.items()), flush=True)
    return rows


def render(rows: dict, ts: list[float], n: int, seed: int, title: str) -> str:
    head = "| student | " + " | ".join(f"t = {t:g}" for t in ts) + " |"
    lines = [f"## {title}", "",
             f"{n} noised exact mixture samples per t (generator seed {seed}), ECT's r(t) at q {Q:g}. A cell is "
             "ECT's l2 loss sum((f(x_t, t) - f(x_r, r))^2) / (t - r), in brackets the part of it that comes from "
             "the change in sigma alone (x_t in both calls), then / the mean squared difference from the exact "
             "flow map at (x_t, t). Students in training mode, as ECT sees them.", "", head,
             "|---" * (len(ts) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{c['loss']:.4f}" + (f" ({c['t_only']:.4f})" if c["t_only"] is not None else "") + f" / {c['error']:.4f}"
            for c in cells) + " |")
    lines += ["", f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`."]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ablation", default="runs/ect-ablation",
                   help="benchmarks/studies/ect_ablation.py's --out (gmm part run)")
    p.add_argument("--ts", default="0.1,0.3,1,3,10,80")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student", action="append", default=[], metavar="LABEL=CKPT",
                   help="score these model.ckpt files instead of --ablation's (repeatable)")
    p.add_argument("--section", default="ect-consistency:gmm", help="the section of --doc to write")
    p.add_argument("--title", default="Where ECT's loss is: consistency against error per noise level (gmm)")
    p.add_argument("--doc", default=str(ROOT / "docs/results.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.student:
        if not all("=" in s for s in args.student):
            raise SystemExit("--student takes LABEL=PATH/model.ckpt")
        paths = {label: Path(path) for label, path in (s.split("=", 1) for s in args.student)}
    else:
        paths = {name: Path(args.ablation) / sub / "model.ckpt" for name, sub in STUDENTS.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing and args.student:
        raise SystemExit(f"missing checkpoints {missing}")
    if missing:
        raise SystemExit(f"missing students {missing}: run benchmarks/studies/ect_ablation.py --part gmm "
                         f"--out {args.ablation} "
                         "(and with --mid-budgets 400 --variants 'gmm-post.toml recipe') first")
    students = {name: model_from_checkpoint(load_model(path)).train() for name, path in paths.items()}
    ts = [float(t) for t in args.ts.split(",")]
    rows = measure(students, ts, args.samples, args.seed)
    text = render(rows, ts, args.samples, args.seed, args.title)
    write_section(args.doc, args.section, text)
    print(text)


if __name__ == "__main__":
    main()
