"""`cmt evaluate`."""

from __future__ import annotations

import click

from cmt_pipeline.config import EvaluateConfig, load_config

from .main import cli
from .options import config_options

# metric key -> (label, format); printed in this order when present
ROWS = {
    "digits_fd": ("digits FD (vs all 1797 real)", "{:.3f}"),
    "digits_fd_floor": ("  noise floor (898 vs 899 real digits)", "{:.3f}"),
    "digits_kid": ("digits KID (vs all 1797 real)", "{:.4g}"),
    "nearest_digit_median": ("nearest training digit (median L2)", "{:.3f}"),
    "nearest_digit_real_median": ("  real digit, nearest other (median)", "{:.3f}"),
    "nearest_digit_close_share": ("share nearer than real 1st pct", "{:.4f}"),
    "fid": ("FID (Inception-v3)", "{:.3f}"),
    "paired_mse": ("paired MSE vs store x0", "{:.3e}"),
    "paired_psnr": ("paired PSNR (dB)", "{:.2f}"),
    "flow_map_mse": ("exact flow-map MSE", "{:.3e}"),
    "flow_map_psnr": ("exact flow-map PSNR (dB)", "{:.2f}"),
    "sliced_w2": ("sliced W2 vs true mixture", "{:.4f}"),
    "sliced_w2_floor": ("  noise floor (exact vs exact)", "{:.4f}"),
    "sample_seconds": ("sampling time (s)", "{:.1f}"),
}


@cli.command("evaluate")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file; its [evaluate] table sets defaults that the options below override.")
@config_options(EvaluateConfig)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate_cmd(config_path, quiet, **opts):
    """Sample a generator from seeded noise and measure it: digits FD and KID (8x8 generators), FID (with local
    Inception weights), paired error against a store, and exact errors for Gaussian-mixture ground truth.

    Prints a table, writes OUT/evaluation.json and a sample picture OUT/samples.png.
    """
    from cmt_pipeline.evaluation import evaluate
    from cmt_pipeline.evaluation.run import with_spread

    cfg = load_config(EvaluateConfig, config_path, "evaluate", **opts)
    result = evaluate(cfg, progress=not quiet)
    m = result["metrics"]
    seeds = result["seeds"]
    click.echo(f"{result['generator']}, {m['num_samples']} samples, seed{'s' * (len(seeds) > 1)} "
               f"{', '.join(map(str, seeds))}" + (" (mean ± std over seeds)" if len(seeds) > 1 else "")
               + (", bf16 autocast" if result["config"]["mixed_precision"] == "bf16" else ""))
    for key, (label, fmt) in ROWS.items():
        if key in m:
            click.echo(f"  {label:<36} {'inf' if m[key] is None else with_spread(m, key, fmt)}")
    if "digits_fd_floor" in m:
        click.echo(f"  (FD shrinks as samples grow: the floor compares 898 vs 899 real digits, the generator "
                   f"{m['num_samples']} samples vs all 1797, so it can read below the floor; docs/evaluation.md)")
    if result.get("cache", {}).get("reused"):
        click.echo(f"read from the cache ({result['cache']['key'][:12]}): the generator and protocol were measured "
                   "before; the sampling time is that run's (--no-cache measures again)")
    click.echo(f"wrote {result['out']}/evaluation.json and samples.png")


@cli.command("train-classifier")
@click.option("--out", type=click.Path(file_okay=False), default="cmt_pipeline/assets/digits-classifier",
              show_default=True, help="Folder for model.safetensors and config.json (its card).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=60, show_default=True)
def train_classifier_cmd(out, seed, epochs):
    """Train the digits feature classifier behind the digits FD (how the shipped one was made)."""
    from cmt_pipeline.evaluation.features import check_classifier_out, save_classifier, train_classifier

    check_classifier_out(out)
    model, card = train_classifier(seed, epochs)
    save_classifier(model, card, out)
    click.echo(f"{out}: held-out accuracy {card['heldout_accuracy']:.4f} on {card['split']['held_out']} digits, "
               f"{card['train_seconds']:.0f} s")
