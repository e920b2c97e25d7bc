"""cmt's native EDM networks (SongUNet / DhariwalUNet behind VP / VE / iDDPM / EDM preconditioning) against numbers
the published code produced, with no reference code needed: tests/data/edm_reference.safetensors holds, per tiny
seeded instance, NVlabs/edm's constructor arguments, state dict, inputs and output D (written by
`benchmarks/equality_edm.py --write-fixture`). Plus the native folder format, fingerprints, errors, and the whole
pipeline on native teachers."""

import json
from pathlib import Path

import pytest
import torch

from cmt_pipeline.models.io import build_network, network_spec
from cmt_pipeline.teachers import NativeDenoiser, load_teacher
from cmt_pipeline.teachers.native import NATIVE_FILE, build_native
from cmt_pipeline.errors import CMTError

FIXTURE = Path(__file__).parent / "data" / "edm_reference.safetensors"


def reference_cases() -> dict:
    from safetensors import safe_open

    with safe_open(FIXTURE, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cases = {}
    for name, record in meta.items():
        prefix = f"{name}/"
        mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        state = {k[len("state/"):]: v.float() for k, v in mine.items() if k.startswith("state/")}
        cases[name] = {**json.loads(record), "state": state, **{k: v for k, v in mine.items() if "/" not in k}}
    return cases


CASES = reference_cases()


def tiny(reference="EDMPrecond", **kwargs) -> NativeDenoiser:
    """A small seeded network with every weight random (zero-initialised output layers would hide the body)."""
    torch.manual_seed(0)
    args = dict(img_resolution=8, img_channels=1, label_dim=3, model_type="SongUNet", model_channels=8,
                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], channel_mult_emb=2)
    net = build_native(reference, {**args, **kwargs})
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.eval()


def test_the_fixture_covers_every_architecture_and_preconditioning():
    assert {c["class"] for c in CASES.values()} == {"VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond"}
    kinds = {(c["init_kwargs"]["model_type"], c["init_kwargs"].get("embedding_type"), c["init_kwargs"]["label_dim"] > 0)
             for c in CASES.values()}
    nets = (("SongUNet", "positional"), ("SongUNet", "fourier"), ("DhariwalUNet", None))
    assert kinds >= {(m, e, cond) for m, e in nets for cond in (False, True)}


@pytest.mark.parametrize("name", sorted(CASES))
@torch.no_grad()
def test_native_networks_reproduce_the_published_code(name):
    case = CASES[name]
    net = build_native(case["class"], case["init_kwargs"])
    net.load_state_dict(case["state"], strict=True)  # the reference's parameter names, all of them
    got = net.eval()(case["x"], case["sigma"], case.get("labels"))
    want = case["D"]
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got - want).norm() <= 1e-5 * want.norm(), name
    assert (got - want).abs().max() <= 1e-5 * want.abs().max(), name


def test_native_folder_round_trip_and_load_teacher(tmp_path):
    net = tiny()
    net.source = {"snapshot": "test.pkl", "sha256": "00" * 32}
    net.save(tmp_path / "t")
    assert json.loads((tmp_path / "t" / NATIVE_FILE).read_text())["reference"] == "EDMPrecond"
    teacher = load_teacher(str(tmp_path / "t"))
    assert isinstance(teacher, NativeDenoiser) and teacher.shape == (1, 8, 8) and teacher.num_classes == 3
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma, labels), net(x, sigma, labels))
    assert teacher.fingerprint() == net.fingerprint() and len(net.fingerprint()) == 64
    assert teacher.describe()["source"] == net.source
    rebuilt = build_network(network_spec(net))  # how a student's checkpoint rebuilds it
    assert type(rebuilt) is type(net) and rebuilt.init_kwargs == net.init_kwargs


def test_the_fingerprint_names_the_weights():
    a, b = tiny(), tiny()
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.model.map_layer0.bias[0] += 1e-3
    assert a.fingerprint() != b.fingerprint()


def test_fresh_networks_hold_the_reference_parameter_names():
    """Every architecture builds; names match the fixture's (so published snapshots load strictly)."""
    for case in CASES.values():
        assert set(build_native(case["class"], case["init_kwargs"]).state_dict()) == set(case["state"])


@pytest.mark.parametrize("kwargs, match", [
    ({"no_such_argument": 1}, "no_such_argument"),
    ({"model_type": "NoSuchUNet"}, "NoSuchUNet"),
    ({"embedding_type": "learned"}, "embedding_type"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    args = dict(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8, channel_mult=[1])
    with pytest.raises(CMTError, match=match) as e:
        build_native("EDMPrecond", {**args, **kwargs})
    assert "\n" not in str(e.value)
    with pytest.raises(CMTError, match="no native network for 'NoPrecond'"):
        build_native("NoPrecond", args)


def test_conditional_networks_need_labels():
    with pytest.raises(ValueError, match="class-conditional"):
        tiny()(torch.zeros(2, 1, 8, 8), 1.0)


def cmt(*args):
    from click.testing import CliRunner

    from cli.main import cli

    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.slow
@pytest.mark.parametrize("reference, backbone", [
    ("EDMPrecond", dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                        channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=8, attn_resolutions=[4])),
    ("VPPrecond", dict(model_type="DhariwalUNet", model_channels=8)),
])
def test_native_teachers_go_through_the_whole_pipeline(tmp_path, reference, backbone):
    """generate -> mid-train -> post-train -> evaluate -> export on a digits-shaped (1x8x8, 10 classes) native
    teacher folder; the exported student loads back (from cmt's own code) as the checkpoint's network."""
    import numpy as np

    from cmt_pipeline.models.io import load_model, model_from_checkpoint
    from cmt_pipeline.teachers.exported import STUDENT_FILE

    torch.manual_seed(0)
    teacher = build_native(reference, dict(img_resolution=8, img_channels=1, label_dim=10, channel_mult=[1, 2],
                                           channel_mult_emb=2, num_blocks=1, dropout=0.1, label_dropout=0.1,
                                           **backbone))
    teacher.save(tmp_path / "teacher")
    cmt("generate-trajectories", "--quiet", "--device", "cpu", "--teacher", tmp_path / "teacher", "--num-samples", 12,
        "--steps", 4, "--shard-size", 6, "--out", tmp_path / "traj")
    cmt("mid-train", "--data", tmp_path / "traj", "--holdout", 4, "--steps", 2, "--batch-size", 4, "--eval-every", 2,
        "--sample-every", 0, "--out", tmp_path / "mid", "--device", "cpu", "--quiet", "--no-tensorboard")
    mid = load_model(tmp_path / "mid" / "model.ckpt", kind="mid-cm")
    assert mid["network"]["net"] == teacher.spec()  # the teacher's architecture, rebuildable
    cmt("post-train", "--init", tmp_path / "mid" / "model.ckpt", "--objective", "ect", "--data", "digits",
        "--steps", 2, "--batch-size", 4, "--eval-samples", 8, "--out", tmp_path / "post", "--device", "cpu",
        "--quiet", "--no-tensorboard", "--sample-every", "0")
    post = tmp_path / "post" / "model.ckpt"
    cmt("evaluate", "--student", post, "--num-samples", 8, "--device", "cpu", "--quiet", "--out", tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"]["num_samples"] == 8
    cmt("export", "--ckpt", post, "--out", tmp_path / "export")
    assert (tmp_path / "export" / STUDENT_FILE).is_file() and "cmt sample --ckpt" in (
        tmp_path / "export" / "README.md").read_text()
    for src, npz in ((post, tmp_path / "ckpt.npz"), (tmp_path / "export", tmp_path / "folder.npz")):
        cmt("sample", "--ckpt", src, "--steps", 2, "--num-samples", 5, "--device", "cpu", "--npz", npz)
    assert np.array_equal(np.load(tmp_path / "ckpt.npz")["samples"], np.load(tmp_path / "folder.npz")["samples"])
    exported, trained = load_teacher(str(tmp_path / "export")), model_from_checkpoint(load_model(post))
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with torch.no_grad():  # the boundary condition came back too: f(x, s) = x at s
        s = exported.precond.boundary_sigma
        assert s > 0 and torch.allclose(exported(x, s, labels), x, atol=1e-6)
        assert torch.equal(exported(x, 1.0, labels), trained(x, 1.0, labels))


def test_meanflow_is_refused_for_native_networks_in_one_line(tmp_path):
    """MeanFlow extends a diffusers time embedding, which the native networks have not: a clear refusal."""
    from click.testing import CliRunner

    from cli.main import cli

    tiny().save(tmp_path / "teacher")
    r = CliRunner().invoke(cli, ["post-train", "--init", str(tmp_path / "teacher"), "--objective", "meanflow",
                                 "--data", "digits", "--steps", "1", "--out", str(tmp_path / "post"), "--device", "cpu",
                                 "--quiet", "--no-tensorboard"])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output
    assert "EDMPrecond has no diffusers time embedding" in r.output and "--objective ect" in r.output
