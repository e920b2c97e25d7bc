"""Config files are type-checked when read, for every table, so a wrong-typed value stops a run before it starts."""

import dataclasses
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import (EvaluateConfig, GenerateConfig, MidTrainConfig, PostTrainConfig, PretrainConfig,
                                 load_config)
from cmt_pipeline.errors import CMTError

TABLES = {"generate": GenerateConfig, "evaluate": EvaluateConfig, "pretrain": PretrainConfig,
          "mid_train": MidTrainConfig, "post_train": PostTrainConfig}


def toml_value(value) -> str:
    return {True: "true", False: "false"}.get(value, repr(value)) if isinstance(value, bool) else repr(value)


@pytest.mark.parametrize("section", TABLES)
def test_every_field_of_every_table_refuses_a_wrong_type(tmp_path, section):
    cls, path = TABLES[section], tmp_path / "c.toml"
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        wrong = 7 if isinstance(default, str) else '"7"'  # a string where none belongs, a number for a string
        path.write_text(f"[{section}]\n{f.name} = {wrong}\n")
        with pytest.raises(CMTError, match=f"wrong type in \\[{section}\\].*{f.name} = "):
            load_config(cls, path, section)


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path):
    """A field renamed in the library must not leave a shipped config that stops at its first command."""
    data = tomllib.loads(path.read_text())
    assert set(data) - {"pipeline"} <= set(TABLES), f"{path.name}: unknown tables {sorted(set(data) - set(TABLES))}"
    for section in set(data) & set(TABLES):
        cfg = load_config(TABLES[section], path, section)
        assert {k: getattr(cfg, k) for k in data[section]} == data[section]


def test_types_that_fit(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[mid_train]\nlr = 1\nsteps = 900\ntensorboard = false\nchannels = [8, 16]\n')
    cfg = load_config(MidTrainConfig, path, "mid_train")
    assert (cfg.lr, cfg.steps, cfg.tensorboard, cfg.channels) == (1, 900, False, [8, 16])  # an int is a fine float
    path.write_text('[evaluate]\nsteps = 2\nnull_label = 3\n')
    assert load_config(EvaluateConfig, path, "evaluate").null_label == 3
    path.write_text('[mid_train]\nsteps = true\n')  # bool is not an int
    with pytest.raises(CMTError, match="steps = True \\(expected an integer, got true or false\\)"):
        load_config(MidTrainConfig, path, "mid_train")


def test_mid_train_config_with_a_string_step_count_fails_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "c.toml").write_text('[mid_train]\ndata = "nowhere"\nsteps = "900"\n')
    r = CliRunner().invoke(cli, ["mid-train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0, r.output
    assert "steps = '900' (expected an integer, got a string)" in r.output
    assert not (tmp_path / "run").exists()


def test_choices_and_ranges_are_checked_when_a_config_is_built(tmp_path):
    """From code, TOML or the CLI: the field's own choices and range, one message, before any stage starts."""
    with pytest.raises(CMTError, match=r"--r-fraction must be in \[0, 1\], got 2"):
        PostTrainConfig(r_fraction=2)
    with pytest.raises(CMTError, match=r"--dropout must be in \[0, 1\), got 1"):
        PostTrainConfig(dropout=1.0)
    with pytest.raises(CMTError, match=r"--eval-samples must be in \[2, 2147483647\], got 1"):
        PostTrainConfig(eval_samples=1)
    (tmp_path / "c.toml").write_text('[mid_train]\nflavour = "xy"\n')
    with pytest.raises(CMTError, match="--flavour must be one of cm, mf, got 'xy'"):
        load_config(MidTrainConfig, tmp_path / "c.toml", "mid_train")
    r = CliRunner().invoke(cli, ["post-train", "--init", "random", "--q", "0", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output == "Error: --q must be positive, got 0.0\n", r.output
    assert not (tmp_path / "run").exists()


def test_config_choices_are_the_librarys_own():
    """config.py is torch-free, so it names the choices the torch-side tables implement; they must agree."""
    from cmt_pipeline.generation.run import DTYPES
    from cmt_pipeline.solvers import GRIDS, SOLVERS
    from cmt_pipeline.stores import WRITERS
    from cmt_pipeline.training.loop import OPTIMIZERS
    from cmt_pipeline.training.posttrain import DEFAULT_NOISE

    choices = {(cls.__name__, f.name): f.metadata.get("choices") for cls in TABLES.values()
               for f in dataclasses.fields(cls)}
    assert choices["GenerateConfig", "solver"] == choices["PretrainConfig", "sample_solver"] == tuple(SOLVERS)
    assert choices["GenerateConfig", "grid"] == choices["EvaluateConfig", "grid"] == tuple(GRIDS)
    assert choices["GenerateConfig", "format"] == tuple(WRITERS)
    assert choices["GenerateConfig", "dtype"] == tuple(DTYPES)
    assert choices["PostTrainConfig", "optimizer"] == tuple(OPTIMIZERS)
    assert choices["PostTrainConfig", "objective"] == tuple(DEFAULT_NOISE)


def test_config_files_that_are_not_small_known_toml_are_refused_in_one_line(tmp_path):
    """A misspelled table ran on defaults; /dev/zero exhausted memory; a deeply nested list raised RecursionError."""
    path = tmp_path / "c.toml"
    path.write_text('[generat]\nnum_samples = 8\n')
    with pytest.raises(CMTError, match=r"unknown table\(s\) \['generat'\]"):
        load_config(GenerateConfig, path, "generate")
    r = CliRunner().invoke(cli, ["generate-trajectories", "--config", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown table(s) ['generat']" in r.output and not (tmp_path / "o").exists()
    path.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(CMTError, match="nested too deeply"):
        load_config(GenerateConfig, path, "generate")
    with pytest.raises(CMTError, match="is not a TOML file of at most 1 MiB"):
        load_config(GenerateConfig, "/dev/zero", "generate")
    with pytest.raises(CMTError, match="is not a TOML file"):
        load_config(GenerateConfig, tmp_path, "generate")
