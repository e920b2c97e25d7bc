"""`cmt sample` and `cmt export`: use a trained student."""

from __future__ import annotations

import io
from pathlib import Path

import click

from cmt_pipeline.constants import SIGMA_MAX, SIGMA_MID

from .main import cli


@cli.command("sample")
@click.option("--ckpt", required=True, help="A student: model.ckpt from cmt post-train / mid-train, a folder written "
              "by cmt export, or a student folder (any teacher spec also works, as a one-jump baseline).")
@click.option("--steps", type=click.IntRange(1, 2), default=1, show_default=True, help="Network evaluations.")
@click.option("--sigma-max", type=float, default=SIGMA_MAX, show_default=True, help="x_T = sigma_max * noise.")
@click.option("--sigma-mid", type=float, default=SIGMA_MID, show_default=True, help="2 steps: the re-noise level.")
@click.option("--num-samples", type=click.IntRange(1, 2**31 - 1), default=64, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True,
              help="Sample i depends only on (seed, i).")
@click.option("--class-labels", default="random", show_default=True,
              help="random, or one class index (class-conditional students).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--out", "png", type=click.Path(dir_okay=False), help="PNG grid of the samples.")
@click.option("--npz", type=click.Path(dir_okay=False), help=".npz with samples, prior, labels (and renoise, latents).")
@click.option("--vae", type=click.Path(file_okay=False), help="Latent student: the AutoencoderKL that decodes its "
              "samples.  [default: the VAE recorded in the checkpoint, or the folder's vae/]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--overwrite", is_flag=True, help="Replace --out / --npz files written by an earlier cmt sample (never "
              "other files).")
def sample_cmd(ckpt, steps, sigma_max, sigma_mid, num_samples, seed, class_labels, batch_size, png, npz, vae, device,
               overwrite):
    """Sample a student in 1 or 2 steps from seeded noise; write a PNG grid and/or an .npz of the raw samples.

    The .npz keeps the network's output unclamped (it strays a little outside [-1, 1]), so the samples can be
    reproduced and compared exactly; clip to [-1, 1] for images, as the PNG does. A latent student's samples are
    decoded by its VAE; the .npz then also holds the raw `latents`.
    """
    import numpy as np

    from cmt_pipeline.latents import load_vae
    from cmt_pipeline.plotting import save_image_grid
    from cmt_pipeline.sampling import StudentSampler, load_student, sample, student_sigmas
    from cmt_pipeline.errors import CMTError
    from cmt_pipeline.files import atomic_write_bytes
    from cmt_pipeline.devices import resolve_device

    if not (png or npz):
        raise CMTError("nothing to write: pass --out grid.png and/or --npz samples.npz")
    check_sigmas(sigma_max, sigma_mid)
    for path in filter(None, (png, npz)):
        check_sample_out(Path(path), overwrite)
    dev = resolve_device(device)
    sampler = StudentSampler(load_student(ckpt, dev), student_sigmas(steps, sigma_max, sigma_mid))
    codec = load_vae(vae or "", ckpt, dev, sampler.shape, who="student")
    x, prior, labels, renoise = sample(sampler, num_samples, seed, batch_size, dev, class_labels, progress=True)
    images = x if codec is None else codec.decode(x)
    if png:
        save_image_grid(images, png)
    if npz:
        buf = io.BytesIO()
        arrays = {"samples": images.numpy(), "prior": prior, "labels": labels,
                  **({"latents": x.numpy()} if codec is not None else {})}
        np.savez(buf, **arrays, **({"renoise": renoise} if renoise is not None else {}))
        atomic_write_bytes(npz, buf.getvalue())
    click.echo(f"{num_samples} samples in {steps} step(s) from {ckpt}: " + ", ".join(p for p in (png, npz) if p))


def check_sigmas(sigma_max: float, sigma_mid: float) -> None:
    """Sampling noise levels must be finite with 0 < sigma_mid < sigma_max: NaN or a negative level makes every
    sample NaN (black images), and export would record it as the pipeline's default."""
    import math

    from cmt_pipeline.errors import CMTError

    if not (math.isfinite(sigma_max) and 0 < sigma_mid < sigma_max):
        raise CMTError(f"need finite 0 < --sigma-mid < --sigma-max, got {sigma_mid:g} and {sigma_max:g}; "
                       f"the defaults are {SIGMA_MID:g} and {SIGMA_MAX:g}")


def check_sample_out(path: Path, overwrite: bool) -> None:
    """An existing file is replaced only with --overwrite, and only when it is a PNG or an .npz holding `samples`
    (what sample writes), so a mistyped --npz RUN/model.ckpt cannot destroy a model."""
    from cmt_pipeline.errors import CMTError

    if not path.exists():
        return
    if not overwrite:
        raise CMTError(f"{path} exists; pass --overwrite to replace it, or choose another name")
    with open(path, "rb") as f:
        png = f.read(4) == b"\x89PNG"
    if not png:
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                ours = "samples" in z.files
        except Exception:  # not an .npz at all
            ours = False
        if not ours:
            raise CMTError(f"{path} is not a sample grid or .npz written by cmt sample, so it is never replaced; "
                           "choose another name")


@cli.command("export")
@click.option("--ckpt", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A student model.ckpt (cmt post-train or mid-train).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write: new, empty, or a previous export (with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it holds a previous export (never other folders).")
@click.option("--raw", is_flag=True, help="Export the raw weights instead of the EMA weights.")
@click.option("--vae", type=click.Path(file_okay=False), help="Latent student: the AutoencoderKL saved as OUT/vae.  "
              "[default: the VAE recorded in the checkpoint]")
@click.option("--sigma-max", type=float, default=SIGMA_MAX, show_default=True,
              help="Recorded as the pipeline's default.")
@click.option("--sigma-mid", type=float, default=SIGMA_MID, show_default=True,
              help="Recorded as the pipeline's default.")
def export_cmd(ckpt, out, overwrite, raw, vae, sigma_max, sigma_mid):
    """Write a student as a diffusers folder that needs only torch and diffusers: the pipeline's code
    (few_step_pipeline.py), unet/, a MeanFlow student's gap_embedding/, a latent student's vae/, and a model card.

    Load it with `DiffusionPipeline.from_pretrained(OUT, trust_remote_code=True)`, then
    `pipe(batch_size=16, num_inference_steps=2).images` (class-conditional students: `class_labels=`). cmt accepts OUT
    wherever it takes a student (`cmt sample --ckpt`, `cmt evaluate --student`, `cmt inspect`).

    A student of a published network written natively in cmt (EDM's SongUNet / DhariwalUNet) is written as that
    network's folder (model.safetensors, cmt_native.json) with cmt_student.json, its boundary condition, instead;
    cmt samples it, rebuilding the network from its own code.
    """
    import shlex

    from cmt_pipeline.export import (export_native, export_pipeline, model_card, native_card, native_student,
                                     to_pipeline)
    from cmt_pipeline.latents import load_vae
    from cmt_pipeline.models.io import load_model, model_from_checkpoint

    check_sigmas(sigma_max, sigma_mid)
    loaded = load_model(ckpt)
    model = model_from_checkpoint(loaded, ema=not raw)
    codec = load_vae(vae or "", ckpt, shape=model.shape, who="student")
    command = ["cmt", "export"]  # for the model card
    for name, value in click.get_current_context().params.items():
        if value is not None and value is not False:
            command += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    command = shlex.join(command)
    if native := native_student(model):  # a published architecture: its own folder format, read by cmt
        card = native_card(native, codec is not None, loaded, ckpt, command, sigma_max, sigma_mid)
        export_native(native, out, card, overwrite, codec and codec.vae, sigma_max, sigma_mid)
        written = f"{native.net.reference} network"
    else:
        pipe = to_pipeline(model, codec and codec.vae, sigma_max, sigma_mid)
        export_pipeline(pipe, out, model_card(pipe, loaded, ckpt, command), overwrite)
        written = "FewStepPipeline"
    click.echo(f"wrote {out} ({written}, {type(model).__name__} student, {'raw' if raw else 'EMA'} weights)")
