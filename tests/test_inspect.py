"""`cmt inspect`: stores (complete or not), checkpoints, network folders, and the trajectory picture."""

from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from cmt_pipeline.config import GenerateConfig
from cmt_pipeline.generation import Worker, generate


def invoke(*args):
    return CliRunner().invoke(cli, ["inspect", *map(str, args)])


def test_inspect_store_and_picture(tmp_path):
    out = tmp_path / "d"
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=12, shard_size=4, steps=8, device="cpu", out=str(out)),
             Worker(0, 2), progress=False)  # only worker 0 of 2: shards 0 and 2 of 3
    r = invoke(out)
    assert r.exit_code == 0, r.output
    assert "complete  False" in r.output and "shards done  2/3" in r.output and "states per sample  8" in r.output
    generate(GenerateConfig(teacher="gmm:gmm8x8", num_samples=12, shard_size=4, steps=8, device="cpu", out=str(out)),
             Worker(1, 2), progress=False)
    r = invoke(out, "--png", tmp_path / "t.png", "--num", 3)
    assert r.exit_code == 0 and "complete  True" in r.output and "gmm:gmm8x8" in r.output
    img = Image.open(tmp_path / "t.png")
    assert img.width > 2 * img.height  # 3 rows of 9 states (8 stored + x0)


def test_inspect_network_folder_and_errors(tmp_path):
    import torch

    from cmt_pipeline.teachers import EDMDenoiser, Precond, build_unet

    EDMDenoiser(build_unet((1, 8, 8), channels=(8, 16), layers_per_block=1), Precond()).save(tmp_path / "t")
    r = invoke(tmp_path / "t")
    assert r.exit_code == 0 and "EDMDenoiser" in r.output and "parameters" in r.output
    r = invoke(tmp_path / "missing")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    r = invoke(tmp_path / "junk.ckpt")
    assert r.exit_code == 2 and "cannot read checkpoint" in r.stderr
    torch.save({"x": 1}, tmp_path / "other.ckpt")
    r = invoke(tmp_path / "other.ckpt")
    assert r.exit_code == 2 and "not a cmt model checkpoint" in r.stderr
    r = invoke(tmp_path / "t", "--png", tmp_path / "x.png")
    assert r.exit_code != 0 and not (tmp_path / "x.png").exists()
