"""`cmt verify`: check a trajectory dataset shard by shard and print what regenerates what is missing or corrupt."""

from __future__ import annotations

import sys

import click

from cmt_pipeline.stores import repair, verify
from cmt_pipeline.stores.verify import finalize_verified

from .main import cli


@cli.command("verify")
@click.argument("directory")
@click.option("--finalize", "do_finalize", is_flag=True,
              help="When every shard checks out, write manifest.json (if missing or stale) and remove leftover "
                   "temporary files.")
@click.option("--repair", "do_repair", is_flag=True,
              help="Delete the done markers of corrupt shards (and a manifest that no longer holds), so that "
                   "rerunning the printed generate-trajectories command regenerates them.")
@click.option("--quick", is_flag=True,
              help="Only check that files exist with their recorded sizes (what readers check at open); "
                   "skip the sha256 and content checks that read every byte (training runs them on each shard "
                   "as it first reads it), so it never says 'ready for training'.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify_command(directory, do_finalize, do_repair, quick, quiet):
    """Check every shard of the dataset in DIRECTORY against its done marker and plan.json.

    DIRECTORY is a folder or any fsspec URL (s3://bucket/path, file://...).

    Full check: each shard present, its sample range as planned, each file's size and sha256 as recorded, and
    its content decodes to exactly its sample indices. Prints missing or corrupt shards with the command that
    regenerates them. Exit status 0 when the dataset is complete, intact and finalized (ready for training;
    with --quick: every file has its recorded size), 1 otherwise, 2 when DIRECTORY is not a dataset or cannot be
    reached.
    """
    report = verify(directory, full=not quick, progress=not quiet)
    if do_repair:
        repair(report)
    if do_finalize and report.intact and (report.manifest != "ok" or report.leftovers):
        finalize_verified(report)
    click.echo(report.text())
    sys.exit(0 if report.ready else 1)
