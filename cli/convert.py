"""`cmt convert-teacher`."""

from __future__ import annotations

import click

from cmt_pipeline.teachers import convert_teacher

from .main import cli


@cli.command("convert-teacher")
@click.argument("snapshot", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New folder for the converted teacher (model.safetensors + cmt_native.json); must not exist.")
def convert_teacher_cmd(snapshot, out):
    """Convert a published network file (an NVlabs EDM or EDM2 .pkl snapshot) into a teacher folder.

    The snapshot is read as data: the Python code it carries is never run (docs/hardening.md). The folder
    records the snapshot's file name and sha256, the preconditioning and the architecture, and `--teacher OUT`
    loads it without the snapshot; `--teacher SNAPSHOT` works too, converting on every load.
    """
    net = convert_teacher(snapshot, out)
    src = net.source
    labels = f"{net.num_classes} classes" if net.num_classes else "unconditional"
    latent = f", latents of {net.latents['vae_name']}" if net.latents else ""
    click.echo(f"{out}: {src['preconditioning']} ({src['architecture']}), {sum(p.numel() for p in net.parameters()):,} "
               f"parameters, {'x'.join(map(str, net.shape))}, {labels}{latent}; from {src['snapshot']} "
               f"sha256 {src['sha256']}")
