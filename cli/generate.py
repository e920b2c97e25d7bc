"""`cmt generate-trajectories`."""

from __future__ import annotations

import click

from cmt_pipeline.config import GenerateConfig, load_config
from cmt_pipeline.generation import generate, worker_from_env

from .main import cli, config_defaults, human_bytes


@config_defaults(GenerateConfig)
@cli.command("generate-trajectories")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file; its [generate] table sets defaults that the options below override.")
@click.option("--teacher", help="Teacher: a model folder (project EDM format or diffusers unet/+scheduler/), "
              "gmm:gmm2d, gmm:gmm8x8, or builtin (the shipped digits teacher).")
@click.option("--num-samples", type=int, help="Number of trajectories N.")
@click.option("--solver", type=click.Choice(["euler", "heun", "dpm2", "dpm3"]), help="ODE solver.")
@click.option("--steps", type=int, help="Solver steps K; each sample stores K states.")
@click.option("--grid", type=click.Choice(["logsnr", "karras"]), help="Sigma grid.")
@click.option("--sigma-max", type=float)
@click.option("--sigma-min", type=float)
@click.option("--format", "format_", type=click.Choice(["zarr", "wds"]), help="Store format.  [default: zarr]")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), help="Storage dtype of traj/x0.")
@click.option("--batch-size", type=int, help="Samples per teacher batch (never crosses a shard).")
@click.option("--shard-size", type=int, help="Samples per shard, the unit of work and of resumption.")
@click.option("--seed", type=int, help="Sample i's noise and label depend only on (seed, i).")
@click.option("--class-labels", help="random, none, or one class index for all samples.")
@click.option("--guidance-scale", type=float, help="Classifier-free guidance scale w of a class-conditional "
              "teacher: D = D(null) + w (D(label) - D(null)); 1 = no guidance.")
@click.option("--null-label", type=int, help="Guidance's 'no class' label.  [default: the model's own null row "
              "(DiT); others must name it]")
@click.option("--vae", type=click.Path(file_okay=False), help="Latent teacher: the diffusers "
              "AutoencoderKL folder its latents belong to; recorded, so later stages decode.  [default: the teacher "
              "folder's vae/ if it has one, else none (pixel space)]")
@click.option("--device", help="auto, cpu, cuda or cuda:N (LOCAL_RANK picks the GPU under launchers).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--worker-index", type=int, help="This worker's index (else from RANK/SLURM env).")
@click.option("--num-workers", type=int, help="Total workers (else from WORLD_SIZE/SLURM env).")
@click.option("--num-threads", type=click.IntRange(min=1), help="CPU threads of this worker: on a CPU it solves "
              "that many batches at once, one thread each, so the bytes do not depend on it.  [default: this "
              "process's share of the CPUs: OMP_NUM_THREADS, else the cores it may use (affinity, cgroup quota), "
              "divided among a launcher's local processes]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_trajectories(config_path, format_, worker_index, num_workers, num_threads, quiet, **opts):
    """Run the teacher's ODE solver from seeded noise and store (prior, trajectory, x0) per sample.

    Re-running the same command resumes: finished shards are kept, missing ones are generated.
    """
    cfg = load_config(GenerateConfig, config_path, "generate", format=format_, **opts)
    worker = worker_from_env(worker_index, num_workers, num_threads=num_threads)
    stats = generate(cfg, worker, progress=not quiet)
    n, size = stats["num_samples"], stats["bytes_on_disk"]
    state = "complete" if stats["complete"] else "incomplete (other workers' shards pending)"
    work = (f"this worker wrote {stats['generated']} samples in {stats['shards_written']} shards, "
            f"{stats['seconds']:.1f} s ({stats['samples_per_s']:.1f} samples/s)" if stats["generated"]
            else "nothing left to do for this worker")
    click.echo(f"{stats['out']}: {state}; {work}; dataset {n} samples, {human_bytes(size)} on disk, "
               f"{human_bytes(size / n)} per sample")
