"""`cmt post-train`."""

from __future__ import annotations

import click

from cmt_pipeline.config import PostTrainConfig, load_config

from .main import cli
from .options import config_options
from .train import train_options


@cli.command("post-train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose [post_train] table sets defaults (e.g. configs/digits-post.toml).")
@config_options(PostTrainConfig)
@train_options
def post_train_cmd(config_path, resume, quiet, **opts):
    """ECT or MeanFlow post-training of a flow-map student from a mid-training checkpoint (CMT), a diffusion
    teacher or random weights, on the real data; then its 1- and 2-step quality.

    Writes OUT/model.ckpt (for `cmt sample` / `cmt export`), OUT/metrics.json (final 1/2-step digits FD and KID,
    or for gmm data the exact flow-map error and sliced W2), OUT/eval.jsonl (the same from step 0), and sample
    grids.
    Multi-GPU/multi-node: `accelerate launch $(which cmt) post-train ...`.
    """
    from cmt_pipeline.training.posttrain import post_train

    cfg = load_config(PostTrainConfig, config_path, "post_train", **opts)
    r = post_train(cfg, resume=resume, progress=not quiet)
    quality = ", ".join(f"{k} {r[k]:.4g}" for k in sorted(r) if k[0] in "12" and "step_" in k)
    loss = f"final loss {r['loss']:.4g}" if r["loss"] is not None else "no steps left to train"
    click.echo(f"{r['out']}: {r['step']} steps from {r['init_origin']} init in {r['seconds']:.0f} s, {loss}; "
               f"{quality}; checkpoint {r['checkpoint']}")
