"""LPIPS distance for mid-training (--distance lpips).

No real weights are downloaded or shipped: random VGG16 weights in torchvision's key format and random heads in
LPIPS's are saved to tmp_path and loaded through the options, and the distance is checked against the LPIPS v0.1
formula written out here with plain torch.nn.functional ops."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cli.main import cli
from cmt_pipeline.config import GenerateConfig, MidTrainConfig
from cmt_pipeline.errors import CMTError
from cmt_pipeline.generation import generate
from cmt_pipeline.objectives.cmt import CMTLoss
from cmt_pipeline.objectives.lpips import LPIPS, MIN_SIZE
from cmt_pipeline.training.midtrain import mid_train
from conftest import loss_of

CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features' convolutions
WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOLS = (4, 9, 16, 23)  # the max-pools before relu5_3 (the fifth, at 30, follows the last tap)
TAPS = (3, 8, 15, 22, 29)
SIZE = 32


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random VGG16 weights as torchvision writes them (with a classifier, which LPIPS ignores) and random
    non-negative heads as LPIPS's weights/v0.1/vgg.pth."""
    d, g = tmp_path_factory.mktemp("lpips"), torch.Generator().manual_seed(0)
    vgg, c = {}, 3
    for i, w in zip(CONVS, WIDTHS):
        vgg[f"features.{i}.weight"] = torch.randn(w, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.randn(w, generator=g) * 0.1
        c = w
    vgg["classifier.0.weight"], vgg["classifier.0.bias"] = torch.randn(8, 4, generator=g), torch.zeros(8)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
             for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, d / "vgg16.pth")
    torch.save(heads, d / "vgg.pth")
    return {"vgg": d / "vgg16.pth", "heads": d / "vgg.pth", "sd": vgg, "lins": heads}


def reference_lpips(a, b, vgg, lins, size):
    """LPIPS v0.1 'vgg', spelled out: grey to RGB, bilinear resize, (x - shift) / scale, VGG16 up to relu5_3 with
    taps after relu1_2 .. relu5_3, unit-normalise over channels, squared difference, 1x1 head, spatial mean, sum."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(x):
        x = F.interpolate(x.repeat(1, 3, 1, 1), size=(size, size), mode="bilinear", align_corners=False)
        h, out = (x - shift) / scale, []
        for i in range(TAPS[-1] + 1):
            if i in CONVS:
                h = F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1)
            elif i in POOLS:
                h = F.max_pool2d(h, 2)
            else:
                h = F.relu(h)
            if i in TAPS:
                out.append(h)
        return out

    total = 0
    for k, (fa, fb) in enumerate(zip(feats(a), feats(b))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((na - nb) ** 2, lins[f"lin{k}.model.1.weight"]).mean((2, 3))
    return total.flatten()


def test_lpips_equals_the_formula_and_is_a_frozen_distance(weights):
    model = LPIPS.from_files(str(weights["vgg"]), str(weights["heads"]), SIZE)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 1, 8, 8, generator=g)).clamp(-1, 1)
    d = model(a, b)
    expected = reference_lpips(a, b, weights["sd"], weights["lins"], SIZE)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(model(a, a), torch.zeros(3))
    rgb = a.repeat(1, 3, 1, 1)
    torch.testing.assert_close(model(rgb, b.repeat(1, 3, 1, 1)), d)  # 1 channel is grey: the same as RGB
    # frozen, eval mode, but differentiable in its inputs
    assert not any(p.requires_grad for p in model.parameters()) and not model.train().training
    x = a.clone().requires_grad_(True)
    model(x, b).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="1- or 3-channel pixel images"):
        model(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8))
    # the config's minimum side is the module's
    assert dataclasses.fields(MidTrainConfig)[[f.name for f in dataclasses.fields(MidTrainConfig)]
                                              .index("lpips_size")].metadata["min"] == MIN_SIZE


def test_a_wrong_weights_file_names_itself(weights, tmp_path):
    good_vgg, good_heads = str(weights["vgg"]), str(weights["heads"])
    bad = tmp_path / "bad.pth"
    sd = dict(weights["sd"])
    sd["features.3.weight"] = sd.pop("features.2.weight")  # a key off by one
    torch.save(sd, bad)
    with pytest.raises(CMTError, match=f"--lpips-vgg {bad} is not a torchvision VGG16.*missing features.2.weight"):
        LPIPS.from_files(str(bad), good_heads, SIZE)
    heads = {**weights["lins"], "lin2.model.1.weight": torch.rand(1, 128, 1, 1)}  # a wrong shape
    torch.save(heads, bad)
    with pytest.raises(CMTError, match=r"--lpips-heads .*bad.pth is not LPIPS.*lin2.model.1.weight \(1, 128, 1, 1\) "
                                       r"\(expected \(1, 256, 1, 1\)\)"):
        LPIPS.from_files(good_vgg, str(bad), SIZE)
    with pytest.raises(CMTError, match="--lpips-heads .*vgg16.pth is not LPIPS.*missing lin0"):  # the two files swapped
        LPIPS.from_files(good_vgg, good_vgg, SIZE)
    with pytest.raises(CMTError, match="--lpips-vgg .*nothing.pth: no such file"):
        LPIPS.from_files(str(tmp_path / "nothing.pth"), good_heads, SIZE)
    bad.write_text("not a checkpoint")
    with pytest.raises(CMTError, match="--lpips-vgg .*bad.pth is not a readable torch state dict"):
        LPIPS.from_files(str(bad), good_heads, SIZE)


def test_lpips_options_are_checked_when_the_config_is_built(weights):
    with pytest.raises(CMTError, match="--distance lpips needs --lpips-vgg and --lpips-heads"):
        MidTrainConfig(distance="lpips")
    with pytest.raises(CMTError, match="--distance lpips needs --lpips-heads"):
        MidTrainConfig(distance="lpips", lpips_vgg=str(weights["vgg"]))
    with pytest.raises(CMTError, match="--distance lpips is for --flavour cm"):
        MidTrainConfig(distance="lpips", flavour="mf", lpips_vgg="a", lpips_heads="b")
    with pytest.raises(CMTError, match="--distance huber is for --flavour cm.*use --distance l2"):
        MidTrainConfig(distance="huber", flavour="mf")  # the mf loss has no distance: refused, not ignored
    with pytest.raises(CMTError, match="--lpips-size must be >= 16"):
        MidTrainConfig(lpips_size=8)
    r = CliRunner().invoke(cli, ["mid-train", "--data", str(weights["vgg"].parent), "--distance", "lpips",
                                 "--lpips-vgg", str(weights["vgg"]), "--out", str(weights["vgg"].parent / "run")])
    out = r.output.strip()
    assert r.exit_code == 2 and "\n" not in out and out.startswith("Error: --distance lpips needs --lpips-heads"), out
    assert not (weights["vgg"].parent / "run").exists()


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm") / "zarr"
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=16, shard_size=16, batch_size=16, steps=4,
                            device="cpu", out=str(out)), progress=False)
    return out


def test_mid_training_with_lpips_moves_the_student(weights, tiny_store, tmp_path):
    seen = []

    def snapshot(state):
        seen.append([p.detach().clone() for p in state.model.parameters()])

    cfg = MidTrainConfig(data=str(tiny_store), out=str(tmp_path / "run"), init="random", holdout=0, steps=2,
                         batch_size=2, points_per_traj=2, lr=1e-3, channels=[8, 16], layers_per_block=1,
                         distance="lpips", lpips_vgg=str(weights["vgg"]), lpips_heads=str(weights["heads"]),
                         lpips_size=SIZE, device="cpu", tensorboard=False, sample_every=0, log_every=1,
                         num_grid_samples=4)
    r = mid_train(cfg, progress=False, callbacks=[snapshot])
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < v < float("inf") for v in losses) and r["step"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(*seen))  # the LPIPS gradient reached the student

    # and directly: the loss's gradient w.r.t. the student's weights is finite and non-zero
    lp = LPIPS.from_files(str(weights["vgg"]), str(weights["heads"]), SIZE)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    sigmas = torch.tensor([80.0, 1.0, 0.002], dtype=torch.float64)
    batch = {"traj": torch.randn(2, 2, 1, 8, 8), "x0": torch.rand(2, 1, 8, 8) * 2 - 1}
    loss_fn = loss_of(CMTLoss, sigmas=sigmas, distance="lpips", lpips=lp)
    loss, _ = loss_fn(lambda x, s, l: net(x / (1 + s.view(-1, 1, 1, 1))), batch, 1)
    loss.backward()
    assert torch.isfinite(net.weight.grad).all() and net.weight.grad.abs().sum() > 0

