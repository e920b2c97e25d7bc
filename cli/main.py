"""`cmt`: the command-line front end. Each command only turns options into a config and calls the library."""

from __future__ import annotations

import errno
import importlib
import shlex
import signal
import sys

import click

from cmt_pipeline import __version__
from cmt_pipeline.errors import CMTError

# command -> (its module under cli/, the first sentence of its help). The commands import torch (seconds), so the
# group imports a command's module only when that command runs, and `cmt --help` lists these sentences instead;
# tests/test_docs.py checks each against its command's own help.
COMMANDS = {
    "convert-teacher": ("convert", "Convert a published network file (an NVlabs EDM or EDM2 .pkl snapshot, a DiT / "
                        "SiT .pt checkpoint) into a teacher folder."),
    "evaluate": ("evaluate", "Sample a generator from seeded noise and measure it: digits FD and KID (8x8 generators), "
                 "FID (with local Inception weights), paired error against a store, and exact errors for "
                 "Gaussian-mixture ground truth."),
    "export": ("sample", "Write a student as a diffusers folder that needs only torch and diffusers: the pipeline's "
               "code (few_step_pipeline.py), unet/, a MeanFlow student's gap_embedding/, a latent student's vae/, and "
               "a model card."),
    "generate-trajectories": ("generate", "Run the teacher's ODE solver from seeded noise and store (prior, "
                              "trajectory, x0) per sample."),
    "inspect": ("inspect", "Summarise a trajectory store, a model.ckpt or a teacher/student folder."),
    "mid-train": ("midtrain", "Consistency Mid-Training: teach a flow-map student to jump from any stored "
                  "trajectory point to that trajectory's endpoint (plain regression: no stop-gradient, no target "
                  "network, no curriculum)."),
    "pipeline": ("pipeline", "Generate -> mid-train -> post-train -> evaluate from one config (e.g. "
                 "configs/digits.toml)."),
    "post-train": ("posttrain", "ECT or MeanFlow post-training of a flow-map student from a mid-training "
                   "checkpoint (CMT), a diffusion teacher or random weights, on the real data; then its 1- and "
                   "2-step quality."),
    "pretrain": ("train", "EDM diffusion pre-training of a teacher (EMA, checkpoints, resume, sample grids)."),
    "sample": ("sample", "Sample a student in 1 or 2 steps from seeded noise; write a PNG grid and/or an .npz "
               "of the raw samples."),
    "train-classifier": ("evaluate", "Train the digits feature classifier behind the digits FD (how the shipped "
                         "one was made)."),
    "verify": ("verify", "Check every shard of the dataset in DIRECTORY against its done marker and plan.json."),
}


# what the file system refused -> the problem and its fix (then how to resume; nothing partial is published)
FULL = "out of disk space writing {}; free space or choose another --out"
DENIED = "{} is on a read-only file system or not writable by you; choose another --out or fix its permissions"
OS_ERRORS = {errno.ENOSPC: FULL, errno.EDQUOT: FULL, errno.EROFS: DENIED, errno.EACCES: DENIED, errno.EPERM: DENIED,
             errno.ENAMETOOLONG: "a name is too long for the file system: {}; choose a shorter path"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: nothing half-written is renamed into
    place (every output is written under a temporary name first) and the same one-line hint is printed."""


def raise_terminated(signum, frame):
    raise Terminated


def _use_threads(ctx, param, value):
    from cmt_pipeline.threads import use_threads  # imports torch: only once a command runs, so `cmt -h` stays fast

    use_threads(value)


THREADS_HELP = ("CPU threads for torch.  [default: this process's share of the CPUs: OMP_NUM_THREADS, else the cores "
                "it may use (affinity, cgroup quota), divided among a launcher's local processes]")


class CMTGroup(click.Group):
    """Loads each command's module on demand (click's lazy-group pattern), and turns library errors (CMTError)
    and a full disk, read-only folder or too long a name into a one-line message and exit status 2, not a traceback; Ctrl-C (exit 130) and SIGTERM
    (exit 143) into one line naming the command that resumes. Every command gets --num-threads (a command that
    declares its own, like generate-trajectories, uses that)."""

    def add_command(self, cmd, name=None):
        if not any(p.name == "num_threads" for p in cmd.params):
            cmd.params.append(click.Option(["--num-threads"], type=click.IntRange(min=1), expose_value=False,
                                           callback=_use_threads, help=THREADS_HELP))
        super().add_command(cmd, name)

    def parse_args(self, ctx, args):
        ctx.meta["argv"] = list(args)  # for the resume hint
        return super().parse_args(ctx, args)

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name in COMMANDS:
            importlib.import_module(f"cli.{COMMANDS[name][0]}")  # its @cli.command registers it
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit))
                                for name in self.list_commands(ctx)])

    def invoke(self, ctx):
        previous = signal.signal(signal.SIGTERM, raise_terminated)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            click.echo(f"\n{'terminated' if isinstance(e, Terminated) else 'interrupted'}; "
                       f"{self.resume_hint(ctx)}", err=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)
        except CMTError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            if e.errno not in OS_ERRORS:
                raise
            click.echo(f"Error: {OS_ERRORS[e.errno].format(e.filename or 'the output')}, then "
                       f"{self.resume_hint(ctx)}", err=True)
            sys.exit(2)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def resume_hint(self, ctx) -> str:
        """Training commands continue only with --resume latest (a plain rerun refuses a folder with
        checkpoints); the others resume, or start over, by running again as they were."""
        argv = ctx.meta["argv"]
        cmd = self.get_command(ctx, argv[0])
        if any(p.name == "resume" for p in cmd.params) and "--resume" not in argv:
            return f"continue from the last checkpoint with: {shlex.join(['cmt', *argv, '--resume', 'latest'])}"
        return f"rerun the same command to resume (finished parts are kept): {shlex.join(['cmt', *argv])}"


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
