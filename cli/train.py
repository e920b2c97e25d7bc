"""`cmt pretrain`, and the training-loop options every training command shares (`train_options`)."""

from __future__ import annotations

import click

from cmt_pipeline.config import PretrainConfig, load_config

from .main import cli, config_defaults


def int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 48,96, got {value!r}") from None


def train_options(f):
    """The shared loop's options (TrainConfig); each defaults to the config file, then to the dataclass."""
    opts = [
        click.option("--out", type=click.Path(file_okay=False), help="Run folder (config, log, checkpoints, samples)."),
        click.option("--steps", type=int, help="Optimizer steps (the linear LR schedule ends here)."),
        click.option("--batch-size", type=int, help="Global batch per step, split over processes and --grad-accum."),
        click.option("--grad-accum", type=int, help="Micro-batches per step on each process."),
        click.option("--optimizer", type=click.Choice(["adam", "radam", "adamw"])),
        click.option("--lr", type=float, help="Peak learning rate."),
        click.option("--lr-schedule", type=click.Choice(["constant", "linear"]), help="linear decays to 0 at --steps."),
        click.option("--warmup-steps", type=int, help="Linear LR warm-up steps."),
        click.option("--weight-decay", type=float),
        click.option("--grad-clip", type=float, help="Max global gradient norm; 0 = off."),
        click.option("--ema-decay", type=float, help="EMA decay per step."),
        click.option("--ema-halflife", type=float, help="EMA half-life in samples; > 0 replaces --ema-decay."),
        click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"])),
        click.option("--seed", type=int, help="Step k's batch and noise depend only on (seed, k)."),
        click.option("--log-every", type=int, help="Steps between log lines (log.jsonl, TensorBoard, progress bar)."),
        click.option("--checkpoint-every", type=int, help="Steps between resumable checkpoints."),
        click.option("--keep-checkpoints", type=int, help="Newest checkpoints kept."),
        click.option("--sample-every", type=int, help="Steps between sample-grid PNGs; 0 = only at the end."),
        click.option("--tensorboard/--no-tensorboard", default=None, help="Also log to TensorBoard if installed."),
        click.option("--device", type=click.Choice(["auto", "cpu"]),
                     help="auto: accelerate's device (GPUs under `accelerate launch`); cpu forces CPU."),
        click.option("--resume", help="Continue a run: 'latest' (in --out) or a checkpoints/step-NNNNNNN folder."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@config_defaults(PretrainConfig)
@cli.command("pretrain")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file whose [pretrain] table sets defaults (e.g. configs/digits-pretrain.toml); "
                   "options override it.")
@click.option("--data", help="digits, gmm:gmm8x8, a folder of images, or a .npy array (see docs/training.md).")
@click.option("--gmm-samples", type=int, help="Training-set size drawn from a gmm:<preset>.")
@click.option("--class-conditional/--unconditional", default=None, help="Train with the labels (digits only).")
@click.option("--channels", callback=int_list, help="UNet block widths, comma-separated, e.g. 48,96.")
@click.option("--layers-per-block", type=int)
@click.option("--attention/--no-attention", default=None, help="Self-attention in the lowest-resolution block.")
@click.option("--dropout", type=float)
@click.option("--p-mean", type=float, help="Training sigma ~ LogNormal(p_mean, p_std).")
@click.option("--p-std", type=float)
@click.option("--sample-solver", type=click.Choice(["euler", "heun", "dpm2", "dpm3"]), help="Solver of the sample grids.")
@click.option("--sample-steps", type=int)
@click.option("--vae", type=click.Path(file_okay=False), help="A diffusers AutoencoderKL folder: encode the "
              "images to its latents once and train the teacher on them; OUT/teacher/vae/ gets a copy.")
@click.option("--export-dtype", type=click.Choice(["float32", "float16"]),
              help="Weights dtype of the exported teacher folder (float16 halves its size).")
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
