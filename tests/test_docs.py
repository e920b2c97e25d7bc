"""Docs that must match the code: the CLI reference is the commands' own --help, and `cmt --help` stays fast."""

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import COMMANDS, cli
from cli.reference import reference
from cmt_pipeline.config import EvaluateConfig, GenerateConfig, MidTrainConfig, PostTrainConfig, PretrainConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_is_current():
    assert DOC.read_text() == reference(), "docs/cli.md is stale: run `python -m cli.reference > docs/cli.md`"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cli_reference_shows_what_the_terminal_shows(name):
    """Each section is `cmt NAME --help` as run, usage line included (it once read `cmt cmt NAME`)."""
    r = CliRunner().invoke(cli, [name, "--help"], prog_name="cmt", terminal_width=100)
    assert r.exit_code == 0 and r.output.startswith(f"Usage: cmt {name} ")
    assert f"## cmt {name}\n\n```text\n{r.output}```" in DOC.read_text()


def test_top_level_help_lists_each_commands_own_first_sentence():
    ctx = click.Context(cli, info_name="cmt")
    for name, (_, sentence) in COMMANDS.items():
        assert cli.get_command(ctx, name).get_short_help_str(1000) == sentence, name


STAGES = {"generate-trajectories": GenerateConfig, "evaluate": EvaluateConfig, "pretrain": PretrainConfig,
          "mid-train": MidTrainConfig, "post-train": PostTrainConfig}


@pytest.mark.parametrize("name", STAGES)
def test_every_config_field_is_an_option_with_the_same_default_and_choices(name):
    """The options are generated from the dataclass (cli/options.py): each field has one, unset it leaves the
    config file's value (None), its help shows the field's default, typing that default gives it back, and
    its choices are the field's."""
    cls, ctx = STAGES[name], click.Context(cli)
    cmd = cli.get_command(ctx, name)
    options = {p.name: p for p in cmd.params}
    typed = cmd.make_context(name, [], parent=ctx).params  # nothing typed
    for f in dataclasses.fields(cls):
        if f.metadata.get("toml_only"):  # a setting only `cmt pipeline` reads
            assert f.name not in options, f.name
            continue
        p = options[f.name]
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert typed[f.name] is None and p.help.startswith(f.metadata["help"]), f.name
        assert tuple(getattr(p.type, "choices", ())) == f.metadata.get("choices", ()), f.name
        if value in (None, ""):  # the help says in words what stands in for it
            continue
        if isinstance(value, bool):
            shown = p.opts[0] if value else p.secondary_opts[0]
            args = [shown]
        else:
            shown = ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(
                value, float) else str(value)
            args = [p.opts[0], shown]
        assert p.help.endswith(f"[default: {shown}]"), f.name
        assert cmd.make_context(name, args, parent=ctx).params[f.name] == value, f.name


def test_mid_and_post_train_help_show_steps_and_lr_defaults():
    for name, lr in (("mid-train", "0.0002"), ("post-train", "0.0001")):
        out = " ".join(CliRunner().invoke(cli, [name, "--help"]).output.split())
        assert "--steps INTEGER Optimizer steps (the linear LR schedule ends here). [default: 1000]" in out
        assert f"--lr FLOAT Peak learning rate. [default: {lr}]" in out


def test_top_level_help_answers_fast_without_torch():
    code = ("import sys, click.testing; from cli.main import cli; r = click.testing.CliRunner(); "
            "assert r.invoke(cli, ['--help']).exit_code == 0 and r.invoke(cli, ['--version']).exit_code == 0; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True)
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 0 and "generate-trajectories" in r.stdout
    assert best < 1.0, f"cmt --help took {best:.2f} s"


README = DOC.parent.parent / "README.md"


def test_readme_paired_error_comes_with_a_store():
    """The paired error needs the store the student's teacher wrote; without --store none is printed."""
    lines = [line for line in README.read_text().splitlines() if "cmt evaluate" in line and "paired" in line]
    assert lines and all("--store" in line for line in lines)


def test_readme_run_time_names_the_machine_and_the_slowdown_when_busy():
    head = README.read_text().split("pip install -e . && cmt pipeline")[0]
    assert "2 idle Intel" in head and "AMD EPYC" in head and "docs/performance.md" in head and "busy" in head


ROOT = DOC.parent.parent
PATH_RE = r"(?<![\w/.-])((?:configs|benchmarks|docs|tests|cmt_pipeline|cli)/[\w./*-]*\w/?)"


def named_in_docs():
    """(file, path) for every repository path named in the README, docs/ and configs/."""
    import re

    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "configs").glob("*.toml"))]:
        text = re.sub(r"-\n\s+", "-", doc.read_text())  # a path --help wrapped at its hyphen (docs/cli.md)
        for path in re.findall(PATH_RE, text):
            yield doc.relative_to(ROOT), path


def test_every_path_and_command_the_docs_name_exists():
    """A doc naming configs/cifar10-generate.toml (never shipped) sends the reader nowhere."""
    import re

    missing = sorted({f"{doc}: {path}" for doc, path in named_in_docs() if not list(ROOT.glob(path.rstrip("/")))})
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)
    code = []  # what a reader types: shell code blocks and inline code spans (not help text or prose)
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = doc.read_text()
        code += re.findall(r"^```(?:bash|sh|console|)\n(.*?)^```", text, re.M | re.S)
        code += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    commands = {c for t in code for c in re.findall(r"(?<![\w/.-])cmt ([a-z][a-z-]+)", t)}
    unknown = sorted(c for c in commands if c not in COMMANDS)
    assert not unknown, f"commands named in the docs that cmt does not have: {unknown}"
