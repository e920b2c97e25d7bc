"""`cmt generate-trajectories`."""

from __future__ import annotations

import click

from cmt_pipeline.config import GenerateConfig, load_config
from cmt_pipeline.generation import generate, worker_from_env

from .main import cli, human_bytes
from .options import config_options


@cli.command("generate-trajectories")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML file; its [generate] table sets defaults that the options below override.")
@config_options(GenerateConfig)
@click.option("--worker-index", type=int, help="This worker's index (else from RANK/SLURM env).")
@click.option("--num-workers", type=int, help="Total workers (else from WORLD_SIZE/SLURM env).")
@click.option("--num-threads", type=click.IntRange(min=1), help="CPU threads of this worker: on a CPU it solves "
              "that many batches at once, one thread each, so the bytes do not depend on it.  [default: this "
              "process's share of the CPUs: OMP_NUM_THREADS, else the cores it may use (affinity, cgroup quota), "
              "divided among a launcher's local processes]")
@click.option("--allow-nonfinite", is_flag=True, help="Store trajectories holding NaN or inf instead of stopping "
              "with an error naming them (to inspect a broken teacher; trainers and `cmt verify` refuse them).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_trajectories(config_path, worker_index, num_workers, num_threads, allow_nonfinite, quiet, **opts):
    """Run the teacher's ODE solver from seeded noise and store (prior, trajectory, x0) per sample.

    Re-running the same command resumes: finished shards are kept, missing ones are generated.
    """
    cfg = load_config(GenerateConfig, config_path, "generate", **opts)
    worker = worker_from_env(worker_index, num_workers, num_threads=num_threads)
    stats = generate(cfg, worker, progress=not quiet, allow_nonfinite=allow_nonfinite)
    n, size = stats["num_samples"], stats["bytes_on_disk"]
    state = "complete" if stats["complete"] else "incomplete (other workers' shards pending)"
    work = (f"this worker wrote {stats['generated']} samples in {stats['shards_written']} shards, "
            f"{stats['seconds']:.1f} s ({stats['samples_per_s']:.1f} samples/s)" if stats["generated"]
            else "nothing left to do for this worker")
    click.echo(f"{stats['out']}: {state}; {work}; dataset {n} samples, {human_bytes(size)} on disk, "
               f"{human_bytes(size / n)} per sample")
