"""`cmt inspect`."""

from __future__ import annotations

import click

from cmt_pipeline.inspection import inspect_path, trajectory_png

from .main import cli, human_bytes


@cli.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--png", type=click.Path(dir_okay=False), help="Stores: draw a few trajectories (states along sigma) here.")
@click.option("--num", type=click.IntRange(1, 64), default=6, show_default=True, help="Trajectories drawn by --png.")
@click.option("--vae", type=click.Path(file_okay=False), help="Latent stores: the AutoencoderKL that decodes --png.  "
              "[default: the one the store recorded]")
def inspect_cmd(path, png, num, vae):
    """Summarise a trajectory store, a model.ckpt or a teacher/student folder.

    A store may be a folder or any fsspec URL (s3://bucket/path, file://...)."""
    info = inspect_path(path)
    width = max(map(len, info))
    for k, v in info.items():
        if k == "size on disk":
            v = human_bytes(v)
        click.echo(f"{k:>{width}}  {v}")
    if png:
        if not info["type"].startswith("trajectory store"):
            raise click.UsageError("--png draws trajectories: PATH must be a trajectory store")
        trajectory_png(path, png, num, vae or "")
        click.echo(f"{'picture':>{width}}  {png}")
