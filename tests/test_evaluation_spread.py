"""KID against its direct formula and its behaviour on same / different distributions, and `cmt evaluate --seeds`:
every metric as mean ± std over evaluation seeds, each seed's values in evaluation.json."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.evaluation.kid import kernel_distance
from cmt_pipeline.evaluation.run import seed_list


def direct_kid(x, y):
    """Binkowski et al.'s unbiased MMD^2 with k(a, b) = (a . b / d + 1)^3, written as explicit sums."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (np.dot(a, b) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, 1.2, size=(9, 3))
    assert kernel_distance(x, y) == pytest.approx(direct_kid(x, y), rel=1e-10)
    big = rng.normal(size=(2100, 3))  # more rows than one block of the estimate; whole kernel matrices here
    kxx, kyy, kxy = ((a @ b.T / 3 + 1) ** 3 for a, b in ((big, big), (y, y), (big, y)))
    m, n = len(big), len(y)
    whole = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    assert kernel_distance(big, y) == pytest.approx(whole, rel=1e-9)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(1500, 64)), rng.normal(size=(1500, 64))
    shifted = rng.normal(0.15, 1.0, size=(1500, 64))
    same, different = kernel_distance(a, b), kernel_distance(a, shifted)
    assert abs(same) < 0.05 * different and different > 0, (same, different)
    # unbiased: a small sample of the same distribution is no further away on average than a large one
    small = np.mean([kernel_distance(a, rng.normal(size=(300, 64))) for _ in range(5)])
    assert abs(small) < 0.1 * different, (small, different)


def test_cmt_evaluate_seeds_reports_mean_std_and_per_seed_values(tmp_path):
    res = CliRunner().invoke(cli, ["evaluate", "--teacher", "builtin", "--solver", "euler", "--steps", "2",
                                   "--num-samples", "40", "--batch-size", "40", "--seeds", "1,2,3", "--quiet",
                                   "--device", "cpu", "--out", str(tmp_path / "e")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert result["seeds"] == [1, 2, 3] and [r["seed"] for r in result["per_seed"]] == [1, 2, 3]
    m = result["metrics"]
    for key in ("digits_fd", "digits_kid", "digits_fd_floor"):
        values = [r[key] for r in result["per_seed"]]
        assert len(set(values)) == 3  # each seed's own samples (and halves split)
        assert m[key] == pytest.approx(np.mean(values)) and m[f"{key}_std"] == pytest.approx(np.std(values, ddof=1))
    assert m["num_samples"] == 40 and "num_samples_std" not in m  # what no seed changes is shown once
    fd_line = next(line for line in res.output.splitlines() if "digits FD" in line)
    assert f"{m['digits_fd']:.3f} ± {m['digits_fd_std']:.3f}" in fd_line and "seeds 1, 2, 3" in res.output

    assert seed_list(2, 5) == [5, 6] and seed_list([4, 2], 1) == [4, 2] and seed_list(1, 7) == [7]  # the default
    for bad in ("0", "1,1", "one"):
        res = CliRunner().invoke(cli, ["evaluate", "--seeds", bad, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and "--seeds" in res.output, res.output
