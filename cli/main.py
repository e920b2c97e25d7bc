"""`cmt`: the command-line front end. Each command only turns options into a config and calls the library."""

from __future__ import annotations

import errno
import sys

import click

from cmt_pipeline import __version__
from cmt_pipeline.utils import CMTError


def _use_threads(ctx, param, value):
    from cmt_pipeline.threads import use_threads  # imports torch: only once a command runs, so `cmt -h` stays fast

    use_threads(value)


THREADS_HELP = ("CPU threads for torch.  [default: this process's share of the CPUs: OMP_NUM_THREADS, else the cores "
                "it may use (affinity, cgroup quota), divided among a launcher's local processes]")


class CMTGroup(click.Group):
    """Turns library errors (CMTError) and a full disk into a one-line message and exit status 2, not a traceback.
    Every command gets --num-threads (a command that declares its own, like generate-trajectories, uses that)."""

    def add_command(self, cmd, name=None):
        if not any(p.name == "num_threads" for p in cmd.params):
            cmd.params.append(click.Option(["--num-threads"], type=click.IntRange(min=1), expose_value=False,
                                           callback=_use_threads, help=THREADS_HELP))
        super().add_command(cmd, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CMTError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            click.echo(f"Error: out of disk space writing {e.filename or 'the output'}; free space or choose another "
                       "--out, then rerun the same command (finished parts are kept; nothing partial was published)",
                       err=True)
            sys.exit(2)


@click.group(cls=CMTGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cmt")
def cli():
    """Consistency Mid-Training: teacher trajectories -> mid-training -> post-training -> 1/2-step generators."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


from cli import generate as _generate, verify as _verify  # noqa: E402,F401  (registers commands)
from cli import train as _train, midtrain as _midtrain, inspect as _inspect, pipeline as _pipeline  # noqa: E402,F401
from cli import evaluate as _evaluate  # noqa: E402,F401
from cli import posttrain as _posttrain, sample as _sample  # noqa: E402,F401
