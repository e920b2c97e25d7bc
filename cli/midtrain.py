"""`cmt mid-train`."""

from __future__ import annotations

import click

from cmt_pipeline.config import MidTrainConfig, load_config

from .main import cli, config_defaults
from .train import int_list, train_options


@config_defaults(MidTrainConfig)
@cli.command("mid-train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose [mid_train] table sets defaults (e.g. configs/digits-mid.toml).")
@click.option("--data", type=click.Path(), help="Trajectory store from `cmt generate-trajectories` (Zarr or WebDataset).")
@click.option("--holdout", type=int, help="Last N trajectories kept out of training for evaluation.")
@click.option("--flavour", type=click.Choice(["cm", "mf"]), help="cm: consistency flow map; mf: MeanFlow average velocity.")
@click.option("--init", type=click.Choice(["teacher", "random"]), help="Start from the teacher's weights or at random.")
@click.option("--teacher", help="Network to start from (default: the store's teacher).")
@click.option("--vae", type=click.Path(file_okay=False), help="AutoencoderKL that decodes a latent store's sample "
              "grids.  [default: the VAE the store recorded]")
@click.option("--points-per-traj", type=int, help="cm: points drawn per trajectory per step (0 = all K).")
@click.option("--pairs-per-traj", type=int, help="mf: (t, r) pairs drawn per trajectory per step.")
@click.option("--distance", type=click.Choice(["l2", "huber"]), help="cm: regression distance.")
@click.option("--huber-c", type=float, help="Pseudo-Huber constant (data units).")
@click.option("--sigma-min-shift", type=float, help="cm: boundary sigma where f(x, s) = x.")
@click.option("--dropout", type=float)
@click.option("--channels", callback=int_list, help="UNet widths for --init random without a network teacher.")
@click.option("--layers-per-block", type=int)
@click.option("--eval-every", type=int, help="Steps between held-out 1-step errors (eval.jsonl).")
@click.option("--eval-samples", type=int, help="Held-out trajectories used for that error.")
@train_options
def mid_train_cmd(config_path, resume, quiet, **opts):
    """Consistency Mid-Training: teach a flow-map student to jump from any stored trajectory point to that
    trajectory's endpoint (plain regression: no stop-gradient, no target network, no curriculum).

    --batch-size counts trajectories (each gives K points in the cm flavour). Writes OUT/model.ckpt (input of
    `cmt post-train --init`), OUT/eval.jsonl and OUT/eval.png (held-out 1-step error), OUT/student/ (cm).
    Multi-GPU/multi-node: `accelerate launch $(which cmt) mid-train ...`.
    """
    from cmt_pipeline.training.midtrain import mid_train

    cfg = load_config(MidTrainConfig, config_path, "mid_train", **opts)
    r = mid_train(cfg, resume=resume, progress=not quiet)
    extra = "".join(f", held-out 1-step {k} {r[k]:.4g}" for k in ("teacher_mse", "exact_mse") if k in r)
    click.echo(f"{r['out']}: {r['step']} steps in {r['seconds']:.0f} s, final loss {r['loss']:.4g}{extra}; "
               f"checkpoint {r['checkpoint']}")
