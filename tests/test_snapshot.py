"""NVlabs EDM/EDM2 snapshots (torch_utils.persistence pickles) are read as data: their weights load into a native
network, the module source they carry never runs, and anything outside the allowlist is refused in one line.

The snapshots here are written by the test itself in the persistence format (each object a call of
torch_utils.persistence._reconstruct_persistent_obj on {type, version, module_src, class_name, state}, tensors
and parameters as torch pickles them, torch.nn containers by NEWOBJ + BUILD), around a stand-in native class
registered as EDMPrecond; no network, no reference code."""

from __future__ import annotations

import collections
import copyreg
import errno
import json
import os
import pickle
import random
import subprocess
import sys
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cli.main import cli
from cmt_pipeline.errors import CMTError
from cmt_pipeline.latents import vae_source
from cmt_pipeline.models.io import is_checkpoint
from cmt_pipeline.teachers import load_teacher
from cmt_pipeline.teachers.base import sigma_column
from cmt_pipeline.teachers.native import PRECONDS, NativeDenoiser, load_snapshot
from cmt_pipeline.files import sha256_file


class StandIn(NativeDenoiser):
    """A tiny denoiser with a reference-like tree: model (SongUNet) -> enc (ModuleDict) -> conv (Conv2d)."""

    reference = "EDMPrecond"

    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_data=0.5, model_channels=4):
        super().__init__(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                         sigma_data=sigma_data, model_channels=model_channels)
        self.shape, self.num_classes = (img_channels, img_resolution, img_resolution), label_dim
        self.sigma_data = sigma_data
        self.model = torch.nn.Module()
        self.model.enc = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(img_channels, img_channels, 3, padding=1)})
        self.model.register_buffer("gain", torch.ones(img_channels))
        self.model.register_buffer("cache", torch.zeros(1), persistent=False)

    def forward(self, x, sigma, class_labels=None):
        c_skip = self.sigma_data ** 2 / (sigma_column(sigma, x) ** 2 + self.sigma_data ** 2)
        return c_skip * x + self.model.enc.conv(x) * self.model.gain.view(1, -1, 1, 1)


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setitem(PRECONDS, "EDMPrecond", StandIn)


@pytest.fixture
def writer(monkeypatch, tmp_path):
    """write(name, top) pickles `top` as a snapshot; Persistent objects pickle as persistence records."""
    def reconstruct(meta):
        raise AssertionError("never called: the test only pickles")

    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = reconstruct
    reconstruct.__module__, reconstruct.__qualname__ = persistence.__name__, "_reconstruct_persistent_obj"
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for module in (persistence, util, types.ModuleType("torch_utils"), types.ModuleType("dnnlib")):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    def write(name, top):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(top, protocol=4))
        return path

    write.EasyDict = util.EasyDict
    return write


MARKER = "snapshot-code-ran"


class Persistent:
    """Pickles as a persistence record whose module source would create the marker file if it were executed."""

    def __init__(self, class_name, state, marker):
        self.meta = {"type": "class", "version": 6, "class_name": class_name, "state": state,
                     "module_src": f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                   f"class {class_name}: pass\n"}

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


class Container:
    """Pickles as torch pickles a torch.nn.ModuleDict: NEWOBJ of the class, then BUILD with its state."""

    def __init__(self, state):
        self.state = state

    @property
    def __class__(self):  # pickle checks that __newobj__'s class is the object's
        return torch.nn.ModuleDict

    def __reduce__(self):
        return copyreg.__newobj__, (torch.nn.ModuleDict,), self.state


class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def module_state(parameters=(), buffers=(), modules=(), kwargs=None, **extra):
    """A torch.nn.Module's pickled __dict__, as the reference's modules carry it."""
    return {"training": False, "_parameters": dict(parameters), "_buffers": dict(buffers),
            "_non_persistent_buffers_set": set(), "_modules": dict(modules),
            "_forward_hooks": collections.OrderedDict(), "_init_args": (),
            "_init_kwargs": kwargs if kwargs is not None else {}, **extra}


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"model.enc.conv.weight": torch.randn(2, 2, 3, 3, generator=g),
            "model.enc.conv.bias": torch.randn(2, generator=g), "model.gain": torch.rand(2, generator=g) + 0.5}


def snapshot(marker, w=None, precond="EDMPrecond", **extra_kwargs):
    """A snapshot dict as EDM's training loop pickles it, around the stand-in's record tree."""
    w = weights() if w is None else w
    conv = Persistent("Conv2d", module_state({"weight": torch.nn.Parameter(w["model.enc.conv.weight"], False),
                                              "bias": torch.nn.Parameter(w["model.enc.conv.bias"], False)},
                                             kwargs={"in_channels": 2, "out_channels": 2, "kernel": 3}), marker)
    enc = Container(module_state(modules={"conv": conv}))
    unet = Persistent("SongUNet", module_state(buffers={"gain": w["model.gain"], "cache": torch.full((1,), 7.0)},
                                               modules={"enc": enc}, skip_scale=np.sqrt(0.5),
                                               _non_persistent_buffers_set={"cache"}), marker)
    kwargs = {"img_resolution": 4, "img_channels": 2, "label_dim": 0, "sigma_data": np.float64(0.5),
              "model_channels": 4, **extra_kwargs}
    net = Persistent(precond, module_state(modules={"model": unet}, kwargs=kwargs, sigma_data=0.5), marker)
    loss = Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5, "_init_args": (),
                                  "_init_kwargs": {}}, marker)
    return {"ema": net, "loss_fn": loss, "augment_pipe": None, "dataset_kwargs": {"path": "x.zip"}}


def one_line_error(excinfo, pattern):
    message = str(excinfo.value)
    assert "\n" not in message and pattern in message, message
    return message


def test_a_snapshot_loads_as_data_and_its_code_never_runs(standin, writer, tmp_path):
    marker = tmp_path / MARKER
    w = weights()
    path = writer("edm-test.pkl", writer.EasyDict(snapshot(marker, w)))
    net = load_snapshot(path)
    assert not marker.exists()
    assert isinstance(net, StandIn) and type(net.init_kwargs["sigma_data"]) is float  # not numpy's float64
    state = net.state_dict()
    assert set(state) == set(w) and all(torch.equal(state[k], w[k]) for k in w)
    assert net.model.cache.item() == 0  # a non-persistent buffer is not taken from the snapshot
    assert net.source == {"snapshot": "edm-test.pkl", "sha256": sha256_file(path), "preconditioning": "EDMPrecond",
                          "architecture": "SongUNet", "format": "NVlabs torch_utils.persistence pickle"}
    assert net.latents is None
    json.dumps(net.describe())  # recorded in stores as JSON


def test_positional_constructor_arguments_are_bound_to_their_names(standin, writer, tmp_path):
    top = snapshot(tmp_path / MARKER)
    state = top["ema"].meta["state"]
    state["_init_args"], state["_init_kwargs"] = (4, 2), {"label_dim": 0, "model_channels": 4}
    net = load_snapshot(writer("positional.pkl", top))
    assert net.init_kwargs == {"img_resolution": 4, "img_channels": 2, "label_dim": 0, "sigma_data": 0.5,
                               "model_channels": 4}


def test_a_class_outside_the_allowlist_is_refused(standin, writer, tmp_path):
    marker = tmp_path / MARKER
    top = snapshot(marker)
    top["ema"].meta["state"]["_modules"]["model"] = Persistent("Backdoor", module_state(), marker)
    with pytest.raises(CMTError) as e:
        load_snapshot(writer("edm-test.pkl", top))
    one_line_error(e, "refused class 'Backdoor' (not a published EDM/EDM2 class)")
    top = snapshot(marker)
    top["ema"].meta["version"] = 5
    with pytest.raises(CMTError) as e:
        load_snapshot(writer("edm-old.pkl", top))
    one_line_error(e, "EDMPrecond record of persistence version 5")
    assert not marker.exists()


@pytest.mark.parametrize("func,args", [(os.system, ("touch {}",)), (eval, ("open({!r}, 'w')",)),
                                       (subprocess.Popen, (["touch", "{}"],))],
                         ids=["os.system", "builtins.eval", "subprocess.Popen"])
def test_a_global_outside_the_allowlist_is_refused_before_it_is_called(standin, writer, tmp_path, func, args):
    marker = tmp_path / MARKER
    args = tuple([a.format(marker) for a in x] if isinstance(x, list) else x.format(marker) for x in args)
    top = snapshot(marker)
    top["ema"].meta["state"]["_init_kwargs"]["channel_mult"] = Payload(func, *args)
    with pytest.raises(CMTError) as e:
        load_snapshot(writer("edm-test.pkl", top))
    name = f"{func.__module__}.{func.__qualname__}"  # as pickle names it: posix.system on Linux
    one_line_error(e, f"refused global {name} (not a published EDM/EDM2 class or a tensor record)")
    assert not marker.exists()


def test_a_hand_written_os_system_call_is_refused(standin, tmp_path):
    marker = tmp_path / MARKER
    path = tmp_path / "evil.pkl"  # protocol 0: GLOBAL 'os system', the string, TUPLE1, REDUCE
    path.write_bytes(b"cos\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR.")
    with pytest.raises(CMTError) as e:
        load_snapshot(path)
    one_line_error(e, "snapshot evil.pkl: refused global os.system")
    assert not marker.exists()


def test_a_snapshot_without_a_denoiser_is_refused(standin, writer, tmp_path):
    top = snapshot(tmp_path / MARKER)
    top["ema"] = top.pop("loss_fn")
    with pytest.raises(CMTError) as e:
        load_snapshot(writer("loss-only.pkl", top))
    one_line_error(e, "its 'ema' entry is EDMLoss, not a denoiser")


def test_weights_that_do_not_fit_the_arguments_are_refused(standin, writer, tmp_path):
    with pytest.raises(CMTError) as e:
        load_snapshot(writer("wide.pkl", snapshot(tmp_path / MARKER, img_channels=3)))
    one_line_error(e, "its weights do not fit this project's EDMPrecond built from its arguments")


def test_a_truncated_snapshot_is_one_line(standin, writer, tmp_path):
    path = writer("edm-test.pkl", snapshot(tmp_path / MARKER))
    data = path.read_bytes()
    for cut in (1, len(data) // 3, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CMTError) as e:
            load_snapshot(path)
        one_line_error(e, "is truncated or corrupt")


def test_a_tampered_snapshot_loads_or_is_one_line(standin, writer, tmp_path):
    """Flipped bytes anywhere: the reader gives a network or a one-line CMTError, never another exception."""
    marker = tmp_path / MARKER
    path = writer("edm-test.pkl", snapshot(marker))
    data = path.read_bytes()
    rng, refused = random.Random(0), 0
    for pos in rng.sample(range(len(data)), 300):
        path.write_bytes(data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:])
        try:
            load_snapshot(path)
        except CMTError as e:
            assert "\n" not in str(e), str(e)
            refused += 1
    assert refused > 30 and not marker.exists()


def test_a_tampered_memo_index_costs_no_memory(tmp_path):
    """One flipped opcode can become LONG_BINPUT with a 4-byte index, which C pickle's memo array grows to (and
    zeroes) before anything else; the reader's memo is a dict."""
    path = tmp_path / "memo.pkl"
    path.write_bytes(b"\x80\x04N" + b"r" + (1 << 26).to_bytes(4, "little") + b".")  # None, memo[2**26] = it
    tracemalloc.start()
    try:
        with pytest.raises(CMTError) as e:
            load_snapshot(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_error(e, "its 'ema' entry is nothing, not a denoiser")
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_an_edm2_encoder_record_gives_the_latent_statistics(standin, writer, tmp_path):
    top = snapshot(tmp_path / MARKER)
    raw_mean, raw_std = np.array([5.81, 3.25, 0.12, -2.15], np.float32), np.array([4.17, 4.62, 3.71, 3.28], np.float32)
    scale = np.float32(0.5) / raw_std
    top["encoder"] = Persistent("StabilityVAEEncoder", {"_init_args": (), "_init_kwargs": {}, "batch_size": 8,
                                                        "vae_name": "stabilityai/sd-vae-ft-mse", "scale": scale,
                                                        "bias": np.float32(0) - raw_mean * scale, "_vae": None},
                                tmp_path / MARKER)
    path = writer("latent.pkl", top)
    net = load_snapshot(path)
    assert net.latents == {"vae_name": "stabilityai/sd-vae-ft-mse", "raw_mean": [5.81, 3.25, 0.12, -2.15],
                           "raw_std": [4.17, 4.62, 3.71, 3.28], "final_mean": 0.0, "final_std": 0.5}
    assert vae_source("my-vae", str(path)) == ("my-vae", None, net.latents)  # read without decoding the weights
    with pytest.raises(CMTError) as e:
        vae_source("", str(path))
    one_line_error(e, "works on the latents of the VAE stabilityai/sd-vae-ft-mse, which it does not hold")
    top["encoder"].meta["state"]["bias"] = np.zeros(4, np.float32)
    with pytest.raises(CMTError) as e:
        load_snapshot(writer("edited.pkl", top))
    one_line_error(e, "its encoder's scale and bias do not follow from its arguments")


def convert(*args):
    return CliRunner().invoke(cli, ["convert-teacher", *map(str, args)])


def test_convert_teacher_writes_a_folder_that_is_the_same_teacher(standin, writer, tmp_path):
    path = writer("edm-test.pkl", snapshot(tmp_path / MARKER))
    r = convert(path, "--out", tmp_path / "teacher")
    assert r.exit_code == 0, r.output
    assert "EDMPrecond (SongUNet)" in r.output and sha256_file(path) in r.output
    meta = json.loads((tmp_path / "teacher" / "cmt_native.json").read_text())
    assert meta["reference"] == "EDMPrecond" and meta["source"]["sha256"] == sha256_file(path)
    from_file, from_folder = load_teacher(str(path)), load_teacher(str(tmp_path / "teacher"))
    assert from_file.fingerprint() == from_folder.fingerprint()
    x = torch.randn(3, 2, 4, 4)
    assert torch.equal(from_file(x, torch.tensor([0.1, 1.0, 10.0])), from_folder(x, torch.tensor([0.1, 1.0, 10.0])))
    assert not is_checkpoint(path)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("case", ["refused", "truncated", "exists", "disk full"])
def test_convert_teacher_fails_in_one_line_and_writes_nothing(standin, writer, tmp_path, monkeypatch, case):
    if case == "disk full":  # the folder's first file is written, then the disk fills up
        def save(self, path):
            save_file({}, Path(path).mkdir(parents=True) or Path(path) / "model.safetensors")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "cmt_native.json"))

        monkeypatch.setattr(NativeDenoiser, "save", save)
    top = snapshot(tmp_path / MARKER)
    if case == "refused":
        top["ema"].meta["state"]["_init_kwargs"]["channel_mult"] = Payload(os.system, "true")
    path = writer("edm-test.pkl", top)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    out = tmp_path / "out" / "teacher"
    out.parent.mkdir()
    if case == "exists":
        out.mkdir()
        (out / "keep").write_text("mine")
    before = sorted(p.name for p in out.parent.iterdir())
    r = convert(path, "--out", out)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert {"refused": f"refused global {os.system.__module__}.system", "truncated": "truncated or corrupt",
            "exists": "already exists", "disk full": "out of disk space"}[case] in lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == before  # no output folder, no temporary left
    assert case != "exists" or (out / "keep").read_text() == "mine"


def generate(teacher, out):
    return CliRunner().invoke(cli, ["generate-trajectories", "--quiet", "--device", "cpu", "--teacher", str(teacher),
                                    "--num-samples", "5", "--steps", "3", "--shard-size", "3", "--out", str(out)])


def test_a_store_from_the_snapshot_and_one_from_its_folder_have_the_same_bytes(standin, writer, tmp_path):
    path = writer("edm-test.pkl", snapshot(tmp_path / MARKER))
    assert convert(path, "--out", tmp_path / "teacher").exit_code == 0
    for teacher, out in ((path, "a"), (tmp_path / "teacher", "b")):
        r = generate(teacher, tmp_path / out)
        assert r.exit_code == 0, r.output
    a, b = tmp_path / "a", tmp_path / "b"
    shards = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix not in (".json",))
    assert shards and shards == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.suffix != ".json")
    assert all((a / s).read_bytes() == (b / s).read_bytes() for s in shards)
    plans = [json.loads((d / "plan.json").read_text()) for d in (a, b)]
    for plan in plans:  # the teacher's spec (the path given) is the only difference
        assert plan["teacher"]["description"]["source"]["sha256"] == sha256_file(path)
        plan["teacher"].pop("spec"), plan["config"].pop("teacher")
    assert plans[0] == plans[1]
