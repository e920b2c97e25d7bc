"""Issue 31: the evaluation cache (recomputed when the generator or the protocol changes, reused otherwise), the
memorisation figure, the report's teacher-best reference and ratio columns, and the two seed sets."""

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

from cmt_pipeline import devices
from cmt_pipeline.config import EvaluateConfig, GenerateConfig, load_config
from cmt_pipeline.errors import CMTError
from cmt_pipeline.generation import generate
from cmt_pipeline.evaluation import evaluate, real_digits, run
from cmt_pipeline.evaluation.metrics import memorisation
from cmt_pipeline.pipeline import evaluations, load_pipeline, write_report
from cmt_pipeline.sampling import TeacherSampler
from cmt_pipeline.teachers import load_teacher

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = ROOT / "cmt_pipeline" / "assets" / "digits-teacher"


def test_cached_rows_are_reused_and_recomputed_when_any_part_of_the_key_changes(tmp_path, monkeypatch,
                                                                                 evaluation_cache):
    teacher = tmp_path / "teacher"
    shutil.copytree(BUILTIN, teacher)
    calls = []
    measure = run.measure
    monkeypatch.setattr(run, "measure", lambda *a, **k: calls.append(1) or measure(*a, **k))
    base = dict(teacher=str(teacher), solver="euler", steps=2, num_samples=6, seeds=[1], cache=True, device="cpu")
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)  # bf16 is keyed as asked on any CI machine

    def measured(name, **over) -> bool:
        calls.clear()
        result = evaluate(EvaluateConfig(**{**base, **over, "out": str(tmp_path / name)}), progress=False)
        assert json.loads((tmp_path / name / "evaluation.json").read_text())["metrics"] == result["metrics"]
        assert (tmp_path / name / "samples.png").stat().st_size > 0
        return bool(calls)

    assert measured("first")
    first = json.loads((tmp_path / "first" / "evaluation.json").read_text())
    assert not measured("again", batch_size=3)  # nothing that changes a number changed: read back, not sampled
    again = json.loads((tmp_path / "again" / "evaluation.json").read_text())
    assert again["metrics"] == first["metrics"] and again["cache"]["reused"] and not first["cache"]["reused"]
    for name, over in (("steps", dict(steps=3)), ("solver", dict(solver="heun")), ("grid", dict(grid="karras")),
                       ("count", dict(num_samples=7)), ("seeds", dict(seeds=[2])), ("sigma", dict(sigma_max=40.0)),
                       ("precision", dict(mixed_precision="bf16"))):
        assert measured(name, **over), f"a change of {name} must be measured again"
    # the same teacher folder retrained in place: only its weights fingerprint tells
    from safetensors.torch import load_file, save_file

    weights = teacher / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 0.01
    save_file(state, str(weights))
    assert measured("retrained")
    assert not measured("retrained-again")
    monkeypatch.setattr(run.cache, "METRIC_VERSION", run.cache.METRIC_VERSION + 1)  # the metric code changed
    assert measured("new-metric")
    entries = len(list(evaluation_cache.glob("*.json")))
    assert measured("uncached", cache=False) and len(list(evaluation_cache.glob("*.json"))) == entries


class Copier:
    """A generator that returns training digits, whatever its noise: a memoriser."""
    shape, num_classes, nfe, renoise_steps, sigma_max = (1, 8, 8), 0, 1, 0, 80.0

    def __call__(self, prior, labels=None, renoise=None):
        return torch.from_numpy(real_digits()[0][:len(prior)]).to(prior)

    def describe(self):
        return {"kind": "copier"}


def test_memorisation_flags_a_generator_that_returns_training_digits():
    cfg = EvaluateConfig(num_samples=64, device="cpu")
    copies = run.measure(cfg, Copier(), None, None, None, "cpu", 1, False)["metrics"]
    assert copies["nearest_digit_median"] == 0 and copies["nearest_digit_close_share"] == 1
    teacher = run.measure(cfg, TeacherSampler(load_teacher("builtin"), "dpm3", 8), None, None, None, "cpu", 1,
                          False)["metrics"]
    assert teacher["nearest_digit_close_share"] < 0.2  # about 0.01 if it copies no more than real digits do
    assert teacher["nearest_digit_median"] > teacher["nearest_digit_real_p1"]
    noise = memorisation(torch.randn(64, 1, 8, 8).clamp(-1, 1))
    assert noise["nearest_digit_close_share"] == 0 and noise["nearest_digit_median"] > noise["nearest_digit_real_median"]
    assert 1.5 < teacher["nearest_digit_real_median"] < 2.5  # a real digit to its nearest other digit: 2.02


PIPELINE = """
[generate]
teacher = "builtin"
grid = "logsnr"
[evaluate]
seeds = [101, 102]
teacher_seeds = [101]
"""


def test_the_pipeline_scores_the_teacher_at_its_best_and_the_report_divides_by_it(tmp_path):
    (tmp_path / "p.toml").write_text(PIPELINE)
    cfgs = load_pipeline(tmp_path / "p.toml", out=str(tmp_path / "run"))
    rows = evaluations(cfgs)
    assert list(rows) == ["teacher", "teacher-best", "mid-1step", "mid-2step", "post-1step", "post-2step"]
    best = rows["teacher-best"]
    assert (best.solver, best.grid, best.steps, best.seeds, best.student) == ("heun", "karras", 18, [101], "")
    assert (rows["teacher"].solver, rows["teacher"].steps, rows["post-2step"].seeds) == ("dpm3", 16, [101, 102])
    (tmp_path / "p.toml").write_text(PIPELINE + "teacher_maps = true\n")
    assert "teacher-2step" in evaluations(load_pipeline(tmp_path / "p.toml"))
    assert not any(cfg.from_store for cfg in rows.values())
    (tmp_path / "p.toml").write_text(PIPELINE + "teacher_from_store = true\n")  # the teacher row alone reads it
    stored = evaluations(load_pipeline(tmp_path / "p.toml", out=str(tmp_path / "run")))
    assert [name for name, cfg in stored.items() if cfg.from_store] == ["teacher"]
    assert stored["teacher"].seeds == [0] and stored["teacher"].store == str(tmp_path / "run" / "trajectories")
    assert stored["teacher-best"].seeds == [101] and stored["post-1step"].seeds == [101, 102]

    fd = {"teacher": 3.5, "teacher-best": 2.5, "mid-1step": 14.0, "mid-2step": 7.5, "post-1step": 7.5,
          "post-2step": 2.0}
    real = memorisation(real_digits()[0][:4])
    results = {name: {"generator": f"{name} gen", "seeds": cfg.seeds if isinstance(cfg.seeds, list) else [1],
                      "config": {"seed": 1}, "metrics": {"nfe": 1, "digits_fd": fd[name], "digits_fd_floor": 6.0, **real}}
               for name, cfg in rows.items()}
    (tmp_path / "run").mkdir()
    report = write_report(tmp_path / "run", cfgs, results, {}).read_text()
    assert "The reference is the teacher at its best: `teacher-best`, teacher-best gen" in report
    assert "| digits FD / teacher-best | digits FD / teacher |" in report
    assert "| post-1step (post-1step gen; seeds 101, 102) | 1 | 7.50 |" in report
    assert "| 3.00x | 2.14x |" in report and "| 0.80x | 0.57x |" in report  # 7.5 / 2.5, 7.5 / 3.5; 2 / 2.5, 2 / 3.5
    assert "nearest training digit (median L2)" in report and "share nearer than real p1" in report


BF16 = dict(teacher="builtin", solver="euler", steps=4, num_samples=64, seeds=[1], device="cpu")


def test_bf16_sampling_runs_the_network_in_bf16_and_says_so(tmp_path, monkeypatch):
    """bf16 autocast moves the samples by round-off, not more, and is recorded with the result and in the report."""
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    full = evaluate(EvaluateConfig(**BF16, out=str(tmp_path / "fp32")), progress=False)
    half = evaluate(EvaluateConfig(**BF16, mixed_precision="bf16", out=str(tmp_path / "bf16")), progress=False)
    assert half["samples"].dtype == full["samples"].dtype == torch.float32
    gap = (half["samples"] - full["samples"]).abs()
    assert 0 < gap.max() < 0.1 and gap.mean() < 0.01  # bf16 round-off (~3e-3 rms on digits), not another generator
    assert half["config"]["mixed_precision"] == "bf16" and full["config"]["mixed_precision"] == "no"
    results = {name: {"config": r["config"]} for name, r in (("teacher", full), ("teacher-best", half))}
    from cmt_pipeline.pipeline import sampled_in

    assert "sampled under bf16 autocast" in sampled_in(results) and sampled_in({"teacher": results["teacher"]}) == ""
    from click.testing import CliRunner

    from cli.main import cli

    args = ["evaluate", "--teacher", "builtin", "--solver", "euler", "--steps", "4", "--num-samples", "64",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "cli")]
    printed = CliRunner().invoke(cli, args + ["--mixed-precision", "bf16"], catch_exceptions=False).output
    assert "64 samples, seed 1, bf16 autocast" in printed


def test_bf16_sampling_where_it_is_slower_than_float32_runs_in_float32_with_a_note(tmp_path, monkeypatch, capsys):
    """Where bf16 is slower than float32 the evaluation is float32's, bit for bit, recorded as such."""
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: False)
    full = evaluate(EvaluateConfig(**BF16, out=str(tmp_path / "fp32")), progress=False)
    asked = evaluate(EvaluateConfig(**BF16, mixed_precision="bf16", out=str(tmp_path / "bf16")), progress=False)
    assert capsys.readouterr().err.count("mixed_precision bf16 samples in float32 here") == 1
    assert torch.equal(asked["samples"], full["samples"]) and asked["config"]["mixed_precision"] == "no"


def test_reported_seeds_are_not_the_seeds_settings_are_chosen_on():
    from cmt_pipeline.training.posttrain import EVAL_SEED

    digits = tomllib.loads((ROOT / "configs" / "digits.toml").read_text())["evaluate"]
    assert digits["seeds"] == run.REPORT_SEEDS and not set(run.REPORT_SEEDS) & set(run.CHOOSE_SEEDS)
    # the reference row under the students' own protocol: a one-seed teacher would make a ratio of that seed's luck
    rows = evaluations(load_pipeline(ROOT / "configs" / "digits.toml"))
    assert rows["teacher-best"].seeds == rows["post-2step"].seeds == rows["mid-1step"].seeds == run.REPORT_SEEDS
    # the store's samples are the pipeline's teacher row alone: `cmt evaluate --config` a student still samples it
    cfg = load_config(EvaluateConfig, ROOT / "configs" / "digits.toml", "evaluate")
    assert cfg.teacher_from_store and not cfg.from_store
    assert EVAL_SEED in run.CHOOSE_SEEDS and EvaluateConfig().seed in run.CHOOSE_SEEDS
    # the post rows are each step count's best step, chosen on post-training's seed (a choose seed), never these
    assert [rows[f"post-{k}step"].student.endswith(f"best-{k}step.ckpt") for k in (1, 2)] == [True, True]
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    assert "seeds 1, 2, 3" in doc and "seeds 101, 102, 103" in doc


@pytest.fixture(scope="module")
def gmm_stores(tmp_path_factory):
    """The 8x8 mixture's dpm3 x 16 solve of 64 samples from seed 7, stored in float32 and in float16."""
    stores = {}
    for dtype in ("float32", "float16"):
        stores[dtype] = tmp_path_factory.mktemp("stores") / dtype
        generate(GenerateConfig(teacher="gmm:gmm8x8", out=str(stores[dtype]), num_samples=64, shard_size=24,
                                dtype=dtype, seed=7, device="cpu"), progress=False)
    return stores


FROM_STORE = dict(teacher="gmm:gmm8x8", num_samples=50, seed=7, seeds=1, reference_steps=64, device="cpu")


def test_the_teacher_row_read_from_the_store_is_its_solve_without_a_forward(tmp_path, gmm_stores, monkeypatch):
    solved = evaluate(EvaluateConfig(**FROM_STORE, out=str(tmp_path / "solved")), progress=False)
    monkeypatch.setattr(run, "sample", lambda *a, **k: pytest.fail("--from-store must not solve again"))
    for dtype, atol in (("float32", 1e-6), ("float16", 4e-3)):
        read = evaluate(EvaluateConfig(**FROM_STORE, store=str(gmm_stores[dtype]), from_store=True,
                                       out=str(tmp_path / dtype)), progress=False)
        assert torch.allclose(read["samples"], solved["samples"], atol=atol, rtol=0)
        assert not torch.equal(read["samples"], solved["samples"]) or dtype == "float32"
        for key in ("digits_fd", "flow_map_mse", "sliced_w2"):
            assert abs(read["metrics"][key] - solved["metrics"][key]) <= 0.01 * solved["metrics"][key], (dtype, key)
        assert read["generator"] == f"{solved['generator']}, read from the store ({dtype})"
        assert "paired_mse" not in read["metrics"] and read["seeds"] == [7]


def test_from_store_refuses_a_store_that_does_not_hold_what_the_solve_would_give(tmp_path, gmm_stores):
    store = str(gmm_stores["float32"])
    for over, message in ((dict(seed=1), "seed 7 only: pass --seed 7"), (dict(seeds=2), "pass --seed 7 and one"),
                          (dict(solver="heun"), r"\(solver differ\)"), (dict(steps=8), "sigma grid"),
                          (dict(sigma_min=0.01), "sigma grid"), (dict(teacher="builtin"), "teacher weights"),
                          (dict(num_samples=65), "holds 64 samples, fewer than --num-samples 65"),
                          (dict(store=""), "needs --store"), (dict(student=str(BUILTIN)), "without --student")):
        cfg = EvaluateConfig(**{**FROM_STORE, "store": store, "from_store": True, **over, "out": str(tmp_path / "x")})
        with pytest.raises(CMTError, match=message):
            evaluate(cfg, progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written
