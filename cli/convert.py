"""`cmt convert-teacher`."""

from __future__ import annotations

import click

from cmt_pipeline.teachers import convert_teacher

from .main import cli


@cli.command("convert-teacher")
@click.argument("snapshot", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New folder for the converted teacher (model.safetensors + cmt_native.json); must not exist.")
@click.option("--flavour", type=click.Choice(["dit", "sit"]),
              help="A .pt checkpoint's family when its file name (DiT-* / SiT-*) does not say it.")
@click.option("--arch", default="", help="A .pt checkpoint's constructor overrides where its weights' shapes do not "
              "tell, e.g. num_heads=16,class_dropout_prob=0.")
def convert_teacher_cmd(snapshot, out, flavour, arch):
    """Convert a published network file (an NVlabs EDM or EDM2 .pkl snapshot, a DiT / SiT .pt checkpoint) into a
    teacher folder.

    The file is read as data: the Python code a snapshot carries is never run, and a .pt is read with
    torch.load(weights_only=True) (docs/hardening.md). The folder records the file's name and sha256, the
    preconditioning and the architecture, and `--teacher OUT` loads it without the file; `--teacher FILE` works
    too, converting on every load.
    """
    from cmt_pipeline.teachers.dit import parse_arch

    net = convert_teacher(snapshot, out, flavour=flavour, arch=parse_arch(arch))
    src = net.source
    labels = f"{net.num_classes} classes" if net.num_classes else "unconditional"
    vae = net.latents and (net.latents.get("vae_name") or net.latents.get("vae"))
    arch = f" ({src['architecture']})" if src.get("architecture") else ""
    click.echo(f"{out}: {net.reference}{arch} {'x'.join(map(str, net.shape))}, {labels}, "
               f"{sum(p.numel() for p in net.parameters()):,} parameters{f', latents of {vae}' if vae else ''}; "
               f"from {snapshot} sha256 {src['sha256']}")
