"""`cmt post-train`."""

from __future__ import annotations

import click

from cmt_pipeline.config import PostTrainConfig, load_config

from .main import cli, config_defaults
from .train import int_list, train_options


@config_defaults(PostTrainConfig)
@cli.command("post-train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose [post_train] table sets defaults (e.g. configs/digits-post.toml).")
@click.option("--init", help="mid-training model.ckpt (CMT: mid-cm for ect, mid-mf for meanflow), a diffusion "
              "teacher (pretrain model.ckpt, teacher folder or builtin), or random.")
@click.option("--objective", type=click.Choice(["ect", "meanflow"]), help="Post-training objective.")
@click.option("--data", help="Real data: digits, gmm:gmm8x8, a folder of images or a .npy array.")
@click.option("--gmm-samples", type=int, help="Training-set size drawn from a gmm:<preset>.")
@click.option("--arch", help="--init random: re-initialise this network's architecture (teacher spec or model.ckpt); "
              "without it --channels/--layers-per-block.")
@click.option("--vae", type=click.Path(file_okay=False), help="Latent student: the AutoencoderKL folder; --data is "
              "encoded to its latents once, samples are decoded.  [default: the VAE recorded with --init / --arch]")
@click.option("--channels", callback=int_list, help="UNet widths for --init random without --arch, e.g. 48,96.")
@click.option("--layers-per-block", type=int)
@click.option("--dropout", type=float, help="Dropout of the student (the same masks for prediction and target).")
@click.option("--sigma-min-shift", type=float, help="ect: boundary sigma of a student made from a diffusion/random net.")
@click.option("--p-mean", type=float, help="Noise levels ~ LogNormal(p_mean, p_std).  [default: ect -1.1, meanflow -0.4]")
@click.option("--p-std", type=float, help="[default: ect 2.0, meanflow 1.0]")
@click.option("--q", type=float, help="ect: r = t (1 - (1 + 8 sigmoid(-t)) / q).")
@click.option("--q-double-every", type=int, help="ect: q^(stage + 1) with a new stage every N steps (0 = fixed q).")
@click.option("--distance", type=click.Choice(["norm", "l2", "huber"]), help="ect: distance between prediction and "
              "target: norm = sqrt(sum sq + c^2) - c (the reference's), l2 = mean sq, huber = sqrt(mean sq + c^2) - c.")
@click.option("--huber-c", type=float, help="ect: c of --distance norm / huber.")
@click.option("--edm-weighting/--no-edm-weighting", default=None,
              help="ect: extra weight (t^2 + sigma_data^2) / (t sigma_data)^2.")
@click.option("--r-fraction", type=float, help="meanflow: share of samples with r != t.")
@click.option("--adaptive-p", type=float, help="meanflow: adaptive weight 1 / (L^2 + c)^p, L the summed squared error.")
@click.option("--adaptive-c", type=float)
@click.option("--sigma-max", type=float, help="Sampling: x_T = sigma_max * noise.")
@click.option("--sigma-mid", type=float, help="Sampling: 2-step re-noise level.")
@click.option("--eval-every", type=int, help="Steps between 1/2-step evaluations (eval.jsonl); 0 = init and end.")
@click.option("--eval-samples", type=int, help="Samples per evaluation.")
@train_options
def post_train_cmd(config_path, resume, quiet, **opts):
    """ECT or MeanFlow post-training of a flow-map student from a mid-training checkpoint (CMT), a diffusion
    teacher or random weights, on the real data; then its 1- and 2-step quality.

    Writes OUT/model.ckpt (for `cmt sample` / `cmt export`), OUT/metrics.json (final 1/2-step digits FD, or for
    gmm data the exact flow-map error and sliced W2), OUT/eval.jsonl (the same from step 0), and sample grids.
    Multi-GPU/multi-node: `accelerate launch $(which cmt) post-train ...`.
    """
    from cmt_pipeline.training.posttrain import post_train

    cfg = load_config(PostTrainConfig, config_path, "post_train", **opts)
    r = post_train(cfg, resume=resume, progress=not quiet)
    quality = ", ".join(f"{k} {r[k]:.4g}" for k in sorted(r) if k[0] in "12" and "step_" in k)
    loss = f"final loss {r['loss']:.4g}" if r["loss"] is not None else "no steps left to train"
    click.echo(f"{r['out']}: {r['step']} steps from {r['init_origin']} init in {r['seconds']:.0f} s, {loss}; "
               f"{quality}; checkpoint {r['checkpoint']}")
