"""Every input is validated once, where its field is declared (config.py): the probes of a careless user each get
one line and exit 2 before anything is written, and random values of every field of every TOML table give a valid
config or a one-line error, never a traceback and never an accepted non-finite or out-of-range number."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import get_type_hints

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import cli
from cmt_pipeline.config import GenerateConfig, load_config
from cmt_pipeline.errors import CMTError
from test_config import TABLES

COMMANDS = {"generate": "generate-trajectories", "evaluate": "evaluate", "pretrain": "pretrain",
            "mid_train": "mid-train", "post_train": "post-train"}
# where each command hands its config to the library: replaced by a stub in the CLI fuzz test
STAGES = {"generate": ("cli.generate", "generate"), "evaluate": ("cmt_pipeline.evaluation", "evaluate"),
          "pretrain": ("cmt_pipeline.training.pretrain", "pretrain"),
          "mid_train": ("cmt_pipeline.training.midtrain", "mid_train"),
          "post_train": ("cmt_pipeline.training.posttrain", "post_train")}


def cmt(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, phrase=""):
    out = r.output.strip()
    assert r.exit_code == 2 and out.startswith("Error: ") and "\n" not in out and phrase in out, (r.exit_code, out)


# ---- the probes -------------------------------------------------------------------------------------------------

PROBES = [  # (command, options, TOML [table] lines, what the error names)
    ("pretrain", ["--grad-clip", "-1"], "", "--grad-clip must be >= 0"),
    ("pretrain", ["--warmup-steps", "-1000"], "", "--warmup-steps must be >= 0"),
    ("pretrain", ["--lr", "inf"], "", "--lr must be a finite number"),
    ("pretrain", ["--lr", "nan"], "", "--lr must be a finite number"),
    ("pretrain", ["--lr", "-0.1"], "", "--lr must be positive"),
    ("pretrain", [], 'lr = "fast"', "lr = 'fast' (expected a number"),
    ("pretrain", [], "weight_decay = nan", "--weight-decay must be a finite number"),
    ("pretrain", ["--ema-decay", "2"], "", "--ema-decay must be in [0, 1)"),
    ("pretrain", [], "steps = 2.5", "steps = 2.5 (expected an integer"),
    ("pretrain", [], "steps = true", "steps = True (expected an integer"),
    ("pretrain", [], "channels = []", "--channels must not be empty"),
    ("pretrain", ["--batch-size", "1000000000"], "", "GiB for one batch"),
    ("mid-train", [], "points_per_traj = -3", "--points-per-traj must be >= 0"),
    ("mid-train", [], "eval_samples = 0", "--eval-samples must be positive"),
    ("mid-train", [], "steps = 2.5", "steps = 2.5 (expected an integer"),
    ("generate-trajectories", ["--seed", "-1"], "", "--seed must be >= 0"),
    ("generate-trajectories", ["--num-samples", "1000000000000"], "", "--num-samples must be positive and <="),
    ("generate-trajectories", [], "steps = 2.5", "steps = 2.5 (expected an integer"),
    ("generate-trajectories", [], "sigma_max = inf", "--sigma-max must be a finite number"),
    ("evaluate", ["--num-samples", "2000000000"], "", "GiB for its samples"),
    ("evaluate", ["--num-samples", "1"], "", "--num-samples must be in [2, "),
    # sizes that allocated before they were checked (each a traceback under a memory limit)
    ("generate-trajectories", ["--steps", "1000000000"], "", "--steps must be positive and <= 4096"),
    ("evaluate", ["--reference-steps", "1000000000"], "", "--reference-steps must be positive and <= 65536"),
    ("evaluate", ["--steps", "4097"], "", "--steps must be positive and <= 4096"),
    ("post-train", ["--gmm-samples", "2147483647", "--init", "random"], "", "--gmm-samples 2147483647 needs about"),
    ("post-train", ["--eval-samples", "2147483647", "--init", "random"], "", "--eval-samples 2147483647 needs about"),
    ("post-train", ["--channels", "13,7", "--init", "random"], "", "each width must be in 2..2048"),
]


@pytest.mark.parametrize("command, options, table, phrase", PROBES)
def test_each_probe_is_one_line_before_anything_is_written(tmp_path, command, options, table, phrase):
    section = next(k for k, v in COMMANDS.items() if v == command)
    (tmp_path / "c.toml").write_text(f"[{section}]\n{table}\n")
    source = {"generate-trajectories": "--teacher", "evaluate": "--teacher"}.get(command, "--data")
    r = cmt(command, "--config", tmp_path / "c.toml", source, "gmm:gmm8x8", *options, "--out", tmp_path / "out")
    one_line_error(r, phrase)
    assert not (tmp_path / "out").exists()


def test_a_refused_seed_leaves_nothing_that_refuses_the_corrected_command(tmp_path):
    args = ["generate-trajectories", "--teacher", "gmm:gmm8x8", "--num-samples", 8, "--steps", 2, "--quiet",
            "--out", tmp_path / "d"]
    one_line_error(cmt(*args, "--seed", -1), "--seed must be >= 0")
    r = cmt(*args, "--seed", 1)
    assert r.exit_code == 0, r.output


def test_a_shard_larger_than_the_dataset_is_the_dataset(tmp_path):
    assert GenerateConfig(num_samples=64, shard_size=10**9).shard_size == 64
    r = cmt("generate-trajectories", "--teacher", "gmm:gmm8x8", "--num-samples", 64, "--shard-size", 10**9,
            "--steps", 2, "--quiet", "--out", tmp_path / "d")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "plan.json").read_text())["shard_size"] == 64


# ---- random tables ------------------------------------------------------------------------------------------------

def values(f: dataclasses.Field, hint):
    """Anything a TOML value can be, mostly of the field's own type (so that its range, not its type, is tested)."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    small_ints, ints = st.integers(-3, 100), st.integers(-2**63, 2**63 - 1)
    edges = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1.0, 1e300])
    typed = {int: st.one_of(small_ints, ints), float: st.one_of(st.floats(), st.floats(-2, 2), small_ints, edges),
             bool: st.booleans(), list: st.lists(st.one_of(small_ints, ints), max_size=3),
             str: st.one_of(st.text(max_size=6), st.sampled_from(f.metadata.get("choices") or [default]))}
    own = st.one_of(*(typed[t] for t in getattr(hint, "__args__", (hint,)) if t in typed))
    anything = st.one_of(ints, st.floats(), st.booleans(), st.text(max_size=6), st.lists(st.floats(), max_size=2))
    return st.one_of(own, own, own, anything)


def tables(cls):
    """Up to four fields of `cls` with random values (paths stay harmless)."""
    hints = get_type_hints(cls)
    fields = {f.name: values(f, hints[f.name]) for f in dataclasses.fields(cls)
              if f.name not in ("out", "data", "teacher")}
    return st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: fields[n] for n in names}))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else "inf" if v > 0 else "-inf"
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def write_table(section: str, table: dict) -> Path:
    path = Path(tempfile.mkdtemp()) / "c.toml"
    path.write_text(f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items()))
    return path


def assert_sound(cfg):
    """An accepted config holds numbers of the declared type, finite and within the declared range."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, float):
                assert math.isfinite(x), (f.name, v)
            if hints[f.name] is int:
                assert type(x) is int, (f.name, v)
            if isinstance(x, (int, float)) and not isinstance(x, bool) and f.metadata.get("min") is not None:
                assert x >= f.metadata["min"], (f.name, v)


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_random_tables_give_a_sound_config_or_one_line(data):
    section = data.draw(st.sampled_from(sorted(TABLES)))
    path = write_table(section, data.draw(tables(TABLES[section])))
    try:
        cfg = load_config(TABLES[section], path, section)
    except CMTError as e:
        assert "\n" not in str(e)
        return
    assert_sound(cfg)


class Reached(Exception):
    pass


@given(st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_tables_through_the_cli_reach_the_stage_or_exit_2_in_one_line(monkeypatch, data):
    """The commands' own config loading: a sound config reaches the stage (a stub here), anything else is one line."""
    reached = []

    def stub(cfg, *args, **kwargs):
        reached.append(cfg)
        raise SystemExit(0)

    for module, name in STAGES.values():
        monkeypatch.setattr(f"{module}.{name}", stub)
    section = data.draw(st.sampled_from(sorted(TABLES)))
    path = write_table(section, data.draw(tables(TABLES[section])))
    r = cmt(COMMANDS[section], "--config", path, "--out", path.parent / "out")
    if r.exit_code == 0:
        assert len(reached) == 1
        assert_sound(reached[0])
    else:
        one_line_error(r)


@pytest.mark.parametrize("options, phrase", [
    (["--num-samples", "2147483647", "--shard-size", "2147483647", "--batch-size", "2147483647"],
     "--batch-size 2147483647 needs about"),
    (["--num-samples", "2147483647"], "GiB on disk"),
])
def test_generation_sizes_are_estimated_before_anything_is_written(tmp_path, options, phrase):
    """These allocated (or started writing 2.8 TB) before any check, and left plan.json and .tmp behind."""
    r = cmt("generate-trajectories", "--teacher", "builtin", "--device", "cpu", *options, "--out", tmp_path / "out")
    one_line_error(r, phrase)
    assert not (tmp_path / "out").exists()
    r = cmt("generate-trajectories", "--teacher", "builtin", "--device", "cpu", "--num-samples", 8, "--batch-size",
            10**8, "--steps", 2, "--quiet", "--out", tmp_path / "small")  # a batch is at most its shard
    assert r.exit_code == 0, r.output


# ---- sizes under a memory limit -----------------------------------------------------------------------------------

SIZE_DRIVER = r'''
import dataclasses, json, sys, tempfile
from pathlib import Path
from click.testing import CliRunner
from cli.main import cli
from cmt_pipeline.config import EvaluateConfig, GenerateConfig, MidTrainConfig, PostTrainConfig, PretrainConfig

COMMANDS = {"generate-trajectories": ("generate", GenerateConfig, ["--teacher", "gmm:gmm8x8"]),
            "evaluate": ("evaluate", EvaluateConfig, ["--teacher", "gmm:gmm8x8"]),
            "pretrain": ("pretrain", PretrainConfig, ["--data", "gmm:gmm8x8"]),
            "mid-train": ("mid_train", MidTrainConfig, ["--data", "gmm:gmm8x8"]),
            "post-train": ("post_train", PostTrainConfig, ["--data", "gmm:gmm8x8", "--init", "random"])}
AT_BOUND = {("generate-trajectories", "num_samples"), ("evaluate", "num_samples"), ("post-train", "eval_samples"),
            ("post-train", "gmm_samples"), ("pretrain", "gmm_samples")}  # allowed, and each allocates: the estimate
results, tmp = [], Path(tempfile.mkdtemp())
for command, (table, cls, source) in COMMANDS.items():
    for f in dataclasses.fields(cls):
        hi = f.metadata.get("max")
        if not isinstance(hi, int) or isinstance(hi, bool) or f.type not in ("int", int):
            continue
        for value in [hi + 1] + ([hi] if (command, f.name) in AT_BOUND else []):
            out = tmp / f"{command}-{f.name}-{value}"
            config = tmp / f"{command}-{f.name}.toml"
            config.write_text(f"[{table}]\n{f.name} = {value}\n")  # toml_only fields have no option
            r = CliRunner().invoke(cli, [command, "--config", str(config), *source, "--out", str(out)])
            results.append([command, f.name, value, r.exit_code, r.output.strip(), out.exists()])
print(json.dumps(results))
'''


def test_every_bounded_size_is_refused_before_allocation_under_a_memory_limit(tmp_path):
    """Every integer field with an upper bound, at bound + 1, and the counts that allocate at the bound itself (their
    memory or disk estimate), give one line and exit 2 with nothing written, in a process limited to 8 GiB of
    address space: a size that allocated before it was checked would end in a MemoryError traceback here."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    r = subprocess.run([sys.executable, "-c", SIZE_DRIVER], capture_output=True, text=True, preexec_fn=limit,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(results) >= 15  # the bounded fields of five commands
    bad = [(c, f, v, code, out) for c, f, v, code, out, wrote in results
           if code != 2 or not out.startswith("Error: ") or "\n" in out or wrote]
    assert not bad, bad
