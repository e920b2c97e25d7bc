"""DiT / SiT .pt checkpoints (teachers/dit.py) without the reference code: a golden file made by it
(benchmarks/equality_dit.py --write-fixture), safe reading and its refusals, and the teacher folder it converts to."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, safe_open

from cmt_pipeline.models.io import build_network, network_spec, open_network
from cmt_pipeline.networks.dit import DiT
from cmt_pipeline.teachers import load_teacher
from cmt_pipeline.teachers.dit import DiTDenoiser, SiTDenoiser, infer_arch, load_dit_checkpoint, parse_arch
from cmt_pipeline.teachers.native import NATIVE_FILE
from cmt_pipeline.errors import CMTError

FIXTURE = Path(__file__).parent / "data" / "dit_reference.safetensors"


def fixture(kind: str):
    """(state dict in float32, reference config, [(x, sigma, labels, reference D)]) of one golden model."""
    with safe_open(FIXTURE, "pt") as f:
        config = json.loads(f.metadata()["configs"])[kind]
    t = load_file(FIXTURE)
    state = {k.split("/weights/", 1)[1]: v.float() for k, v in t.items() if k.startswith(f"{kind}/weights/")}
    n = sum(k.startswith(f"{kind}/x/") for k in t)
    cases = [(t[f"{kind}/x/{j}"], t[f"{kind}/sigma/{j}"], t[f"{kind}/labels"], t[f"{kind}/D/{j}"]) for j in range(n)]
    return state, config, cases


def max_rel_err(net, cases) -> float:
    with torch.no_grad():
        return max(float((net(x, s, y) - ref).abs().max() / ref.abs().max()) for x, s, y, ref in cases)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each golden model saved as the published files are: a bare state dict named DiT-* / SiT-*."""
    d = tmp_path_factory.mktemp("pt")
    for kind in ("DiT", "SiT"):
        torch.save(fixture(kind)[0], d / f"{kind}-tiny-8x8.pt")
    return d


@pytest.mark.parametrize("kind", ["DiT", "SiT"])
def test_golden_reference_outputs_are_reproduced(kind, checkpoints):
    state, config, cases = fixture(kind)
    net = load_dit_checkpoint(checkpoints / f"{kind}-tiny-8x8.pt")
    assert net.reference == kind and {k: net.init_kwargs[k] for k in config} == config
    sigmas = torch.cat([s for _, s, _, _ in cases])
    assert sigmas.min() < 0.02 and sigmas.max() > 100  # the whole range, both ends
    assert max_rel_err(net, cases) <= 1e-5
    fresh = DiT(**config).pos_embed  # a network built without weights has the reference's position table
    assert torch.allclose(fresh, state["pos_embed"], atol=1e-3)  # the fixture stores float16


def test_the_families_are_not_interchangeable(checkpoints):
    """The family only changes the parametrisation; the wrong one must not pass the golden check."""
    _, _, cases = fixture("SiT")
    net = load_dit_checkpoint(checkpoints / "SiT-tiny-8x8.pt", flavour="dit")
    assert net.reference == "DiT" and max_rel_err(net, cases) > 1e-2


def test_a_training_checkpoint_gives_its_ema_weights_and_args_name_the_family(tmp_path, checkpoints):
    state, config, cases = fixture("SiT")
    other = {k: v + 1 for k, v in state.items()}
    args = argparse.Namespace(model="SiT-XL/2", path_type="Linear", prediction="velocity", num_classes=10)
    torch.save({"model": other, "ema": state, "opt": {"state": {}, "param_groups": []}, "args": args},
               tmp_path / "0000100.pt")
    net = load_dit_checkpoint(tmp_path / "0000100.pt")
    assert net.reference == "SiT" and max_rel_err(net, cases) <= 1e-5
    torch.save({"model": state}, tmp_path / "DiT-no-ema.pt")  # no "ema": the raw weights
    assert load_dit_checkpoint(tmp_path / "DiT-no-ema.pt").reference == "DiT"
    args.path_type = "GVP"
    torch.save({"ema": state, "args": args}, tmp_path / "0000200.pt")
    with pytest.raises(CMTError, match="path_type GVP"):
        load_dit_checkpoint(tmp_path / "0000200.pt")


class Payload:
    def __reduce__(self):
        import os

        return os.system, ("touch PWNED",)


def test_refusals_name_the_problem(tmp_path, checkpoints, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "DiT-other.pt")
    with pytest.raises(CMTError, match="is not a DiT / SiT state dict .*DiT-\\*.pt"):
        load_dit_checkpoint(tmp_path / "DiT-other.pt")
    torch.save({"ema": fixture("DiT")[0], "evil": Payload()}, tmp_path / "DiT-evil.pt")
    with pytest.raises(CMTError, match="safe loading .*refuses"):
        load_dit_checkpoint(tmp_path / "DiT-evil.pt")
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "model.pt").write_bytes((checkpoints / "DiT-tiny-8x8.pt").read_bytes())
    with pytest.raises(CMTError, match="does not say whether it is a DiT .* or a SiT .*--flavour dit\\|sit"):
        load_dit_checkpoint(tmp_path / "model.pt")
    with pytest.raises(CMTError, match="unknown flavour 'edm'"):
        load_dit_checkpoint(tmp_path / "model.pt", flavour="edm")
    (tmp_path / "SiT-text.pt").write_text("not a torch file")
    with pytest.raises(CMTError, match="cannot read .* as a torch checkpoint"):
        load_dit_checkpoint(tmp_path / "SiT-text.pt")
    r = run_cli("convert-teacher", tmp_path / "model.pt", "--out", tmp_path / "out")  # the converter's one line
    assert r.exit_code == 2 and "does not say whether" in r.output and not (tmp_path / "out").exists(), r.output
    with pytest.raises(CMTError, match="unknown architecture override"):
        load_dit_checkpoint(tmp_path / "model.pt", arch={"heads": 2}, flavour="dit")
    with pytest.raises(CMTError, match="not divisible into 3 heads"):
        load_dit_checkpoint(tmp_path / "model.pt", arch={"num_heads": 3}, flavour="dit")
    # 12 classes claimed for a table of 11 rows
    with pytest.raises(CMTError, match="does not fit the DiT architecture .*size mismatch for y_embedder"):
        load_dit_checkpoint(tmp_path / "model.pt", arch={"num_classes": 12}, flavour="dit")


def test_architecture_comes_from_shapes_and_overrides_take_precedence(checkpoints):
    shapes = {"x_embedder.proj.weight": (1152, 4, 2, 2), "pos_embed": (1, 256, 1152),
              "t_embedder.mlp.0.weight": (1152, 256), "y_embedder.embedding_table.weight": (1001, 1152),
              "blocks.0.attn.qkv.weight": (3456, 1152), "blocks.0.mlp.fc1.weight": (4608, 1152),
              "blocks.27.attn.qkv.weight": (3456, 1152), "final_layer.linear.weight": (32, 1152)}
    arch = infer_arch({k: torch.zeros(()).expand(*s) for k, s in shapes.items()})  # DiT-XL/2 at 256 px
    assert arch == {"input_size": 32, "patch_size": 2, "in_channels": 4, "hidden_size": 1152, "depth": 28,
                    "num_heads": 16, "mlp_ratio": 4.0, "class_dropout_prob": 0.1, "num_classes": 1000,
                    "learn_sigma": True}
    assert parse_arch("num_heads=2, class_dropout_prob=0.0,learn_sigma=false") == {
        "num_heads": 2, "class_dropout_prob": 0.0, "learn_sigma": False}
    base = load_dit_checkpoint(checkpoints / "DiT-tiny-8x8.pt")
    nulls = load_dit_checkpoint(checkpoints / "DiT-tiny-8x8.pt", arch={"class_dropout_prob": 0.0})
    assert (base.num_classes, base.null_label) == (10, 10) and (nulls.num_classes, nulls.null_label) == (11, None)
    two = load_dit_checkpoint(checkpoints / "DiT-tiny-8x8.pt", arch={"num_heads": 2})
    x, s, y, _ = fixture("DiT")[2][3]
    assert not torch.allclose(two(x, s, y), base(x, s, y), rtol=1e-3)  # heads matter, so they are recorded


def test_teacher_pt_the_converted_folder_and_a_rebuilt_spec_agree(tmp_path, checkpoints):
    for kind in ("DiT", "SiT"):
        pt = checkpoints / f"{kind}-tiny-8x8.pt"
        direct = load_teacher(str(pt))
        r = run_cli("convert-teacher", pt, "--out", tmp_path / kind)
        assert r.exit_code == 0 and f"{kind} {'x'.join(map(str, direct.shape))}" in r.output, r.output
        folder = tmp_path / kind
        meta = json.loads((folder / NATIVE_FILE).read_text())
        assert meta["reference"] == kind and meta["source"]["checkpoint"] == pt.name and meta["latents"] is None
        converted = load_teacher(str(folder))
        opened = open_network(str(pt)).module  # a .pt is a teacher, not a model.ckpt
        rebuilt = build_network(network_spec(direct))
        rebuilt.load_state_dict(direct.state_dict())
        x, s, y, _ = fixture(kind)[2][4]
        out = direct(x, s, y)
        for other in (converted, opened, rebuilt.eval()):
            assert torch.equal(other(x, s, y), out)
        assert converted.fingerprint() == direct.fingerprint()
        guided = load_teacher(str(pt), guidance_scale=2.0)  # the label-dropout row is guidance's null label
        uncond = direct(x, s, torch.full_like(y, 10))
        assert torch.allclose(guided(x, s, y), uncond + 2 * (out - uncond), atol=1e-5)


def test_a_latent_model_records_the_vae_it_expects_and_generates_with_vae(tmp_path):
    """A 4-channel model says which SD-VAE it wants; --vae DIR (any AutoencoderKL with 4 latent channels here) is
    recorded in the store it generates."""
    from diffusers import AutoencoderKL

    net = SiTDenoiser(input_size=4, in_channels=4, hidden_size=64, depth=1, num_classes=3)
    torch.save(net.model.state_dict(), tmp_path / "SiT-latent.pt")
    loaded = load_dit_checkpoint(tmp_path / "SiT-latent.pt")
    assert loaded.shape == (4, 4, 4) and loaded.latents["scaling_factor"] == 0.18215
    assert "sd-vae-ft-ema" in loaded.latents["vae"] and loaded.latents["image_size"] == 32
    AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=8).save_pretrained(tmp_path / "vae")
    r = run_cli("generate-trajectories", "--teacher", tmp_path / "SiT-latent.pt", "--vae", tmp_path / "vae",
                "--num-samples", 4, "--steps", 2, "--out", tmp_path / "store")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["vae"]["latent_channels"] == 4 and manifest["shape"] == [4, 4, 4]


def run_cli(*args):
    from click.testing import CliRunner

    from cli.main import cli

    local = args[0] not in ("export", "convert-teacher")  # commands that run a network take these
    return CliRunner().invoke(cli, [*map(str, args)] + (["--device", "cpu", "--quiet"] if local else []))


@pytest.mark.slow
@pytest.mark.parametrize("kind, flavour, objective", [("DiT", "cm", "ect"), ("SiT", "mf", "meanflow")])
def test_a_pt_teacher_runs_the_whole_pipeline(tmp_path, kind, flavour, objective):
    """generate -> mid-train -> post-train -> evaluate from a pixel-space DiT / SiT .pt (random weights, digits'
    1x8x8 with 10 classes); export writes the consistency student as its network folder, which samples as the
    checkpoint does, and refuses the MeanFlow one by name."""
    torch.manual_seed(0)
    net = {"DiT": DiTDenoiser, "SiT": SiTDenoiser}[kind](input_size=8, in_channels=1, hidden_size=32, depth=2,
                                                         num_classes=10)
    teacher = tmp_path / f"{kind}-digits.pt"
    torch.save(net.model.state_dict(), teacher)
    store, mid, post = tmp_path / "store", tmp_path / "mid", tmp_path / "post"
    r = run_cli("generate-trajectories", "--teacher", teacher, "--num-samples", 12, "--steps", 4, "--shard-size", 6,
                "--out", store)
    assert r.exit_code == 0, r.output
    assert json.loads((store / "manifest.json").read_text())["teacher"]["description"]["class"] == kind
    r = run_cli("mid-train", "--data", store, "--init", "teacher", "--flavour", flavour, "--holdout", 4, "--steps",
                2, "--batch-size", 4, "--eval-every", 2, "--sample-every", 0, "--no-tensorboard", "--out", mid)
    assert r.exit_code == 0, r.output
    r = run_cli("post-train", "--init", mid / "model.ckpt", "--objective", objective, "--data", "digits", "--steps",
                2, "--batch-size", 4, "--eval-samples", 8, "--sample-every", 0, "--no-tensorboard", "--out", post)
    assert r.exit_code == 0, r.output
    spec = torch.load(post / "model.ckpt", weights_only=True)["network"]["net"]
    assert (spec["class"], spec["reference"]) == ("NativeDenoiser", kind)
    r = run_cli("evaluate", "--student", post / "model.ckpt", "--teacher", teacher, "--steps", 2, "--num-samples", 8,
                "--store", store, "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    assert "paired_mse" in json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"]
    r = run_cli("export", "--ckpt", post / "model.ckpt", "--out", tmp_path / "export")
    if flavour == "mf":  # a MeanFlow student of a native network has no exported form yet
        assert r.exit_code == 2 and "MeanFlowStudent" in r.output, r.output
        return
    assert r.exit_code == 0, r.output  # a consistency student exports as its network folder + boundary record
    exported = open_network(str(tmp_path / "export")).module
    trained = open_network(str(post / "model.ckpt")).module
    x, s, y = torch.randn(3, 1, 8, 8), torch.tensor([80.0, 1.0, 0.01]), torch.tensor([0, 4, 9])
    assert torch.equal(exported(x, s, y), trained(x, s, y))
