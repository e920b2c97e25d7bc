"""`--cuda-graphs` (generation/graphs.py): the teacher's forward replayed from a captured graph gives the eager bytes,
and whatever would not (a replay that differs, a teacher that cannot be captured) falls back to eager with a one-line note.

Without CUDA the capture is mimicked: a replay refills one output buffer from the static inputs, as a graph does.
That tests everything but the capture itself: sigma as a filled 0-d tensor instead of a Python float, the static
buffers, outputs that the next replay overwrites. With CUDA, real graphs make a store byte-identical to eager's."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.generation.graphs import GraphedTeacher, same_bits
from cmt_pipeline.solvers import SOLVERS, logsnr_grid


def cpu_capture(forward):
    out = forward()
    return (lambda: out.copy_(forward())), out


def solve(denoiser, teacher, solver):
    torch.manual_seed(1)
    x = torch.randn(3, *teacher.shape) * 80
    labels = torch.tensor([0, 1, 2]) % teacher.num_classes if teacher.num_classes else None
    return SOLVERS[solver](denoiser, x, logsnr_grid(6), labels, return_intermediates=True)


@pytest.mark.parametrize("solver", ["dpm3", "heun"])
@pytest.mark.parametrize("name", ["digits", "gmm", "vp", "guided", "edm2", "dit"])
def test_a_replayed_forward_gives_the_eager_bytes(teachers, name, solver):
    teacher = teachers[name]
    graphed = GraphedTeacher(teacher, check=0, capture=cpu_capture)  # trusted unchecked: the bytes must hold anyway
    states = solve(graphed, teacher, solver)
    assert not graphed.eager and graphed.replays  # no fallback: the replays made these states
    assert same_bits(states, solve(teacher, teacher, solver))


def test_a_replay_that_differs_is_caught_and_the_run_goes_eager(teachers, capsys):
    teacher = teachers["digits"]

    def off_by_one_ulp(forward):
        out = forward()
        return (lambda: out.copy_(torch.nextafter(forward(), torch.tensor(float("inf"))))), out

    graphed = GraphedTeacher(teacher, check=3, capture=off_by_one_ulp)
    states = solve(graphed, teacher, "dpm3")
    assert capsys.readouterr().err == ("note: --cuda-graphs: the teacher's forward replayed as a graph gives other "
                                       "bytes than run eagerly; running it eagerly (same bytes, no graphs)\n")
    assert graphed.eager
    assert same_bits(states, solve(teacher, teacher, "dpm3"))


def test_a_teacher_that_cannot_be_captured_runs_eagerly(teachers, capsys):
    teacher = teachers["gmm"]

    def refuses(forward):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    graphed = GraphedTeacher(teacher, check=3, capture=refuses)
    states = solve(graphed, teacher, "heun")
    assert capsys.readouterr().err == ("note: --cuda-graphs: the teacher's forward could not be captured (RuntimeError: "
                                       "operation not permitted when stream is capturing); running it eagerly (same "
                                       "bytes, no graphs)\n")
    assert same_bits(states, solve(teacher, teacher, "heun"))


def test_cuda_graphs_without_cuda_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["generate-trajectories", "--teacher", "gmm:gmm8x8", "--num-samples", "8",
                                 "--device", "cpu", "--cuda-graphs", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and r.output.strip() == ("Error: --cuda-graphs needs a CUDA device and this run is on "
                                                     "cpu; drop --cuda-graphs"), r.output
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("teacher", ["builtin", "gmm:gmm8x8"])
def test_cuda_graphs_make_the_eager_store_on_a_gpu(tmp_path, teacher):
    args = ["generate-trajectories", "--teacher", teacher, "--num-samples", "40", "--batch-size", "16",
            "--shard-size", "20", "--device", "cuda"]  # a short last batch of each shard: a second graph
    for name, extra in (("eager", []), ("graphs", ["--cuda-graphs"])):
        r = CliRunner().invoke(cli, [*args, *extra, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        assert "--cuda-graphs" not in r.stderr  # no fallback note: the graphs made the store
    assert (tmp_path / "eager/manifest.json").read_bytes() == (tmp_path / "graphs/manifest.json").read_bytes()


def test_graphed_teacher_is_a_drop_in_for_the_generator(teachers):
    teacher = copy.deepcopy(teachers["guided"])
    graphed = GraphedTeacher(teacher, check=1, capture=cpu_capture)
    assert (graphed.shape, graphed.num_classes) == (teacher.shape, teacher.num_classes)
    x = torch.randn(2, *teacher.shape)
    sigma = torch.full((2,), 3.0)  # a tensor sigma (a trainer's call) is never replayed
    assert same_bits(graphed(x, sigma, torch.tensor([0, 1])), teacher(x, sigma, torch.tensor([0, 1])))
    assert not graphed.replays
