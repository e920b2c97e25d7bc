"""`cmt pipeline`."""

from __future__ import annotations

import click

from cmt_pipeline.pipeline import run_pipeline

from .main import cli


@cli.command("pipeline")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default: the file's [pipeline] out).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pipeline_cmd(config, out, quiet):
    """Generate -> mid-train -> post-train -> evaluate from one config (e.g. configs/digits.toml).

    Stages whose outputs are complete are skipped; interrupted ones resume. Writes RUN/report.md.
    """
    r = run_pipeline(config, out, progress=not quiet, echo=click.echo)
    click.echo(f"report: {r['report']}")
