"""`cmt pretrain`, and the options every training command adds to its config's (`train_options`)."""

from __future__ import annotations

import click

from cmt_pipeline.config import PretrainConfig, load_config

from .main import cli
from .options import config_options


def train_options(f):
    """What every training command adds to its config's options."""
    f = click.option("--quiet", is_flag=True, help="No progress bar.")(f)
    return click.option("--resume", help="Continue a run: 'latest' (in --out) or a checkpoints/step-NNNNNNN "
                        "folder.")(f)


@cli.command("pretrain")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose [pretrain] table sets defaults (e.g. configs/digits-pretrain.toml); "
                   "options override it.")
@config_options(PretrainConfig)
@train_options
def pretrain_cmd(config_path, resume, quiet, **opts):
    """EDM diffusion pre-training of a teacher (EMA, checkpoints, resume, sample grids).

    Writes OUT/model.ckpt and OUT/teacher/ (use it as --teacher OUT/teacher). Multi-GPU/multi-node:
    `accelerate launch $(which cmt) pretrain ...` with no other change. Defaults train the built-in digits teacher.
    """
    from cmt_pipeline.training.pretrain import pretrain

    cfg = load_config(PretrainConfig, config_path, "pretrain", **opts)
    r = pretrain(cfg, resume=resume, progress=not quiet)
    loss = f"final loss {r['loss']:.4f}" if r["loss"] is not None else "no steps left to train"
    click.echo(f"{r['out']}: step {r['step']}, {loss}, {r['parameters']:,} parameters, {r['seconds']:.0f} s; "
               f"model {r['checkpoint']}, teacher {r['teacher']}")
