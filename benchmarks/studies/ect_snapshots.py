"""Where along ECT post-training, and under which average of the weights, is the student best? One ECT run of
configs/digits.toml's [post_train] (one setting changed by --set, if any) keeps EMAs of several decays beside the
loop's own; at each --snapshots step the raw weights and every EMA are written as a model.ckpt (the run's, with
the EMA swapped in), then each is scored at 1 and 2 steps on the choose seeds with `cmt evaluate --config
configs/digits.toml --seeds 1,2,3` (5000 samples each). The EMAs do not change training, so one run scores them all.

    python benchmarks/studies/ect_snapshots.py --init runs/digits/mid/model.ckpt --out runs/ect-snapshots \
        --seed 0 --steps 900 --snapshots 300,600,900 --emas 0.99,0.995,0.998
    python benchmarks/studies/ect_snapshots.py ... --name b128 --set batch_size=128 --snapshots 600
    python benchmarks/studies/ect_snapshots.py ... --name wsd400 --decay-from 400 --steps 600 --snapshots 600

--decay-from N holds the lr after the warm-up and then decays it linearly to 0 from step N to the last (a
warm-up-stable-decay schedule, which the library does not have: the study patches the loop's lr_at). Prints one
line per snapshot, weights and step count: the per-seed FDs and their mean ± std. Finished runs and scores are
reused. A study (benchmarks/studies/: kept reproducible, not maintained); run from the repository root.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from pathlib import Path

import torch

import cmt_pipeline.training.loop as loop
from cmt_pipeline.config import PostTrainConfig, load_config
from cmt_pipeline.files import atomic_write_bytes
from cmt_pipeline.training import EMA
from cmt_pipeline.training.posttrain import post_train

CONFIG = "configs/digits.toml"


class Averages:
    """Loop callback: EMAs of the given decays (the loop keeps cfg.ema_decay's itself), and at each snapshot step
    a CPU copy of the raw weights and of every EMA, keyed (step, name)."""

    def __init__(self, decays, snapshots, loop_decay: float):
        self.decays, self.snapshots, self.loop_decay = decays, set(snapshots), loop_decay
        self.emas, self.saved = None, {}

    def __call__(self, s):
        if self.emas is None:
            self.emas = {d: EMA(s.ema) for d in self.decays}  # from the loop's EMA after step 1
        else:
            for d, ema in self.emas.items():
                ema.update(s.model, d)
        if s.step in self.snapshots:
            models = [("raw", s.model), (f"ema{self.loop_decay}", s.ema)]
            for name, m in models + [(f"ema{d}", e.model) for d, e in self.emas.items()]:
                self.saved[(s.step, name)] = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}


def wsd(decay_from: int):
    """The loop's constant lr (after its warm-up), decayed linearly to 0 from step `decay_from` to the last."""
    constant = loop.lr_at

    def lr_at(cfg, step: int) -> float:
        return constant(cfg, step) * min(1.0, (cfg.steps - step + 1) / (cfg.steps - decay_from + 1))
    return lr_at


def value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def train(args, out: Path) -> None:
    if (out / "run" / "metrics.json").exists():
        return
    overrides = dict((k, value(v)) for k, v in (s.split("=", 1) for s in args.set))
    cfg = load_config(PostTrainConfig, CONFIG, "post_train", init=args.init, out=str(out / "run"), steps=args.steps,
                      seed=args.seed, eval_every=0, sample_every=0, checkpoint_every=args.steps, tensorboard=False,
                      **overrides)
    if args.decay_from:
        if cfg.lr_schedule != "constant":
            raise SystemExit(f"--decay-from decays a constant lr; this run's lr_schedule is {cfg.lr_schedule!r}")
        loop.lr_at = wsd(args.decay_from)
    averages = Averages(args.emas, args.snapshots, cfg.ema_decay)
    post_train(cfg, progress=False, callbacks=[averages])
    ckpt = torch.load(out / "run" / "model.ckpt", map_location="cpu", weights_only=True)
    for (step, name), weights in averages.saved.items():
        buf = io.BytesIO()
        torch.save(dict(ckpt, ema_state_dict=weights, step=step), buf)
        atomic_write_bytes(out / f"step{step}-{name}.ckpt", buf.getvalue())


def score(ckpt: Path, steps: int) -> dict:
    out = ckpt.with_suffix("") / f"{steps}step"
    if not (out / "evaluation.json").exists():
        subprocess.run(["cmt", "evaluate", "--config", CONFIG, "--student", str(ckpt), "--steps", str(steps),
                        "--seeds", "1,2,3", "--out", str(out), "--quiet"], check=True, capture_output=True)
    return json.loads((out / "evaluation.json").read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", required=True, help="the mid-trained model.ckpt")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="base")
    p.add_argument("--seed", type=int, default=0, help="ECT's training seed")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--snapshots", type=lambda s: [int(x) for x in s.split(",")], default=[300, 600, 900])
    p.add_argument("--emas", type=lambda s: [float(x) for x in s.split(",")], default=[0.995, 0.998],
                   help="decays kept beside the loop's own [post_train] ema_decay")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a [post_train] setting")
    p.add_argument("--decay-from", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out) / f"{args.name}-seed{args.seed}"
    train(args, out)
    for ckpt in sorted(out.glob("step*.ckpt"), key=lambda c: (int(c.stem.split("-")[0][4:]), c.stem)):
        for steps in (1, 2):
            m = score(ckpt, steps)
            per_seed = " / ".join(f"{r['digits_fd']:.2f}" for r in m["per_seed"])
            print(f"{args.name} seed {args.seed} {ckpt.stem} {steps}-step: {per_seed}  "
                  f"{m['metrics']['digits_fd']:.2f} ± {m['metrics']['digits_fd_std']:.2f}", flush=True)


if __name__ == "__main__":
    main()
