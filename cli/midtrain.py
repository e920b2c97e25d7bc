"""`cmt mid-train`."""

from __future__ import annotations

import click

from cmt_pipeline.config import MidTrainConfig, load_config

from .main import cli
from .options import config_options
from .train import train_options


@cli.command("mid-train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose [mid_train] table sets defaults (e.g. configs/gmm-mid.toml).")
@config_options(MidTrainConfig)
@train_options
def mid_train_cmd(config_path, resume, quiet, **opts):
    """Consistency Mid-Training: teach a flow-map student to jump from any stored trajectory point to that
    trajectory's endpoint (plain regression: no stop-gradient, no target network, no curriculum).

    --batch-size counts trajectories (each gives K points in the cm flavour). Writes OUT/model.ckpt (input of
    `cmt post-train --init`), OUT/eval.jsonl and OUT/eval.png (1-step error on held-out and on
    trained-on trajectories), OUT/student/ (cm).
    Multi-GPU/multi-node: `accelerate launch $(which cmt) mid-train ...`.
    """
    from cmt_pipeline.training.midtrain import mid_train

    cfg = load_config(MidTrainConfig, config_path, "mid_train", **opts)
    r = mid_train(cfg, resume=resume, progress=not quiet)
    extra = "".join(f", held-out 1-step {k} {r[k]:.4g}" for k in ("teacher_mse", "exact_mse") if k in r)
    loss = f"final loss {r['loss']:.4g}" if r["loss"] is not None else "no steps left to train"
    click.echo(f"{r['out']}: {r['step']} steps in {r['seconds']:.0f} s, {loss}{extra}; checkpoint {r['checkpoint']}")
