"""`cmt evaluate`."""

from __future__ import annotations

import click

from cmt_pipeline.config import EvaluateConfig, load_config

from .main import cli, config_defaults

# metric key -> (label, format); printed in this order when present
ROWS = {
    "digits_fd": ("digits FD (vs all 1797 real)", "{:.3f}"),
    "digits_fd_floor": ("  noise floor (898 vs 899 real digits)", "{:.3f}"),
    "digits_kid": ("digits KID (vs all 1797 real)", "{:.4g}"),
    "fid": ("FID (Inception-v3)", "{:.3f}"),
    "paired_mse": ("paired MSE vs store x0", "{:.3e}"),
    "paired_psnr": ("paired PSNR (dB)", "{:.2f}"),
    "flow_map_mse": ("exact flow-map MSE", "{:.3e}"),
    "flow_map_psnr": ("exact flow-map PSNR (dB)", "{:.2f}"),
    "sliced_w2": ("sliced W2 vs true mixture", "{:.4f}"),
    "sliced_w2_floor": ("  noise floor (exact vs exact)", "{:.4f}"),
    "sample_seconds": ("sampling time (s)", "{:.1f}"),
}


def count_or_list(value: str | None):
    """--seeds: '1,2,3' is a list of seeds, '3' a count."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()] if "," in value else int(value)
    except ValueError:
        raise click.BadParameter(f"a count or a comma list of integers, got {value!r}", param_hint="'--seeds'")


@config_defaults(EvaluateConfig)
@cli.command("evaluate")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file; its [evaluate] table sets defaults that the options below override.")
@click.option("--teacher", help="Generator when no --student: a model folder, gmm:gmm2d, gmm:gmm8x8 or builtin.")
@click.option("--solver", type=click.Choice(["euler", "heun", "dpm2", "dpm3"]), help="The teacher's solver.")
@click.option("--grid", type=click.Choice(["logsnr", "karras"]), help="The teacher's sigma grid.")
@click.option("--guidance-scale", type=float, help="The teacher's classifier-free guidance scale (a class-conditional "
              "teacher; as in generate-trajectories); 1 = none.")
@click.option("--null-label", type=int, help="Guidance's 'no class' label.  [default: the model's own null row (DiT)]")
@click.option("--student", help="A student model.ckpt (mid-/post-training, either flavour), a folder written by cmt "
              "export, or a student folder (project EDM format); evaluated at --steps 1 or 2 instead of the teacher.")
@click.option("--steps", type=int, help="Solver steps for a teacher [default: 16]; 1 or 2 for a student [default: 1].")
@click.option("--sigma-max", type=float, help="x_T = sigma_max * noise.")
@click.option("--sigma-min", type=float, help="The teacher solve's last sigma.")
@click.option("--sigma-mid", type=float, help="A 2-step student's intermediate sigma.")
@click.option("--num-samples", type=int, help="Generated samples.")
@click.option("--seed", type=int, help="Sample i's noise depends only on (seed, i).")
@click.option("--seeds", callback=lambda ctx, param, value: count_or_list(value),
              help="Evaluation seeds, e.g. 1,2,3, or a count N (--seed .. --seed + N - 1): each metric as mean ± std "
              "over them, each seed's values in evaluation.json.")
@click.option("--class-labels", help="random, or one class index for all samples (conditional generators).")
@click.option("--batch-size", type=int)
@click.option("--store", type=click.Path(exists=True, file_okay=False),
              help="Trajectory store: paired MSE/PSNR of the generator vs the stored solver samples.")
@click.option("--store-samples", type=int, help="Use the store's last N samples, where `cmt mid-train --holdout` keeps "
              "its held-out trajectories (0 = all).")
@click.option("--inception-weights", help="Local FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth); "
              "enables FID. Never downloaded.")
@click.option("--fid-reference", help="FID reference: .npz with mu/sigma, or .npy images (N, C, H, W) in [-1, 1].  "
              "[default: the real digits, for 8x8 generators]")
@click.option("--vae", type=click.Path(file_okay=False), help="Latent generator: the AutoencoderKL that decodes its "
              "samples for the image metrics and picture.  [default: the one it recorded, or its folder's vae/]")
@click.option("--gmm", help="gmm:<preset> ground truth for a student (a gmm: teacher is its own).")
@click.option("--reference-steps", type=int, help="Steps of the float64 dpm3 solve used as the exact flow map.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for evaluation.json and samples.png.")
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
               f"{', '.join(map(str, seeds))}" + (" (mean ± std over seeds)" if len(seeds) > 1 else ""))
    for key, (label, fmt) in ROWS.items():
        if key in m:
            click.echo(f"  {label:<36} {'inf' if m[key] is None else with_spread(m, key, fmt)}")
    if "digits_fd_floor" in m:
        click.echo(f"  (FD shrinks as samples grow: the floor compares 898 vs 899 real digits, the generator "
                   f"{m['num_samples']} samples vs all 1797, so it can read below the floor; docs/evaluation.md)")
    click.echo(f"wrote {result['out']}/evaluation.json and samples.png")


@cli.command("train-classifier")
@click.option("--out", type=click.Path(file_okay=False), default="cmt_pipeline/assets/digits-classifier",
              show_default=True, help="Folder for model.safetensors and config.json (its card).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=60, show_default=True)
def train_classifier_cmd(out, seed, epochs):
    """Train the digits feature classifier behind the digits FD (how the shipped one was made)."""
    from cmt_pipeline.evaluation.features import save_classifier, train_classifier

    model, card = train_classifier(seed, epochs)
    save_classifier(model, card, out)
    click.echo(f"{out}: held-out accuracy {card['heldout_accuracy']:.4f} on {card['split']['held_out']} digits, "
               f"{card['train_seconds']:.0f} s")
