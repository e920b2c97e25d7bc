"""`cmt inspect`: what is this folder or file? A summary of a trajectory store, a model checkpoint or a
teacher/student folder, and a picture of a store's trajectories (states along sigma)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .latents import load_vae
from .models.io import is_checkpoint, load_model, open_network
from .plotting import save_image_grid, save_scatter
from .stores import Location, open_store, read_range
from .stores.layout import MANIFEST, PLAN, done_shards, num_shards, read_plan
from .errors import CMTError
from .files import disk_usage


def inspect_store(root: Location) -> dict:
    complete = root.exists(MANIFEST)
    plan = read_plan(root)
    done = len(done_shards(root))
    sig = plan["sigmas"]
    desc, guide = plan["teacher"]["description"], plan.get("guidance")
    size = root.usage()
    return {
        "type": f"trajectory store ({plan['format']})", "samples": plan["num_samples"],
        "complete": complete, "shards done": f"{done}/{num_shards(plan)}",
        "sample shape": "x".join(map(str, plan["shape"])), "states per sample": plan["num_states"],
        "sigmas": f"{sig[0]:g} -> {sig[-2]:g} (states), endpoint {sig[-1]:g}",
        "solver": f"{plan['solver']} on the {plan['config']['grid']} grid, {plan['nfe_per_sample']} NFE/sample",
        "teacher": plan["teacher"]["spec"], "teacher fingerprint": plan["teacher"]["fingerprint"][:16],
        "teacher network": " ".join(str(desc[k]) for k in ("model", "kind", "parametrisation") if k in desc),
        "guidance": f"scale {guide['scale']:g}, null label {guide['null_label']}" if guide else "none",
        "vae": f"{vae['path']} (scaling factor {vae['scaling_factor']:g}, shift {vae['shift_factor'] or 0:g}), "
               f"latents {'x'.join(map(str, vae['latent_shape']))} -> images {'x'.join(map(str, vae['image_shape']))}"
               if (vae := plan.get("vae")) else "none (pixel space)",
        "classes": plan["num_classes"] or "unconditional", "dtype": plan["dtype"], "seed": plan["config"]["seed"],
        "size on disk": size, "bytes per sample": round(size / plan["num_samples"], 1),
    }


def inspect_checkpoint(path: Path) -> dict:
    ckpt = load_model(path)  # the record alone: a checkpoint whose network cannot be rebuilt still has one
    net = ckpt.get("network") or {}
    params = sum(v.numel() for v in ckpt["state_dict"].values())
    cfg, data = ckpt.get("config", {}), ckpt.get("data", {})
    out = {"type": f"model checkpoint ({ckpt['kind']})", "step": ckpt["step"], "network": net.get("class"),
           "parameters": params, "precond": net.get("precond"), "size on disk": disk_usage(path)}
    out.update({f"config.{k}": cfg[k] for k in ("steps", "batch_size", "lr", "ema_decay", "flavour", "objective",
                                                 "init", "data") if k in cfg})
    out.update({f"data.{k}": data[k] for k in ("store", "num_samples", "holdout", "teacher", "fingerprint")
                if k in data})
    if data.get("vae"):  # a latent model: the autoencoder its samples are decoded with
        out["data.vae"] = data["vae"]["path"]
    return out


def inspect_network_folder(path: Path) -> dict:
    d = open_network(path).module.describe()
    what = "published network file" if path.is_file() else "network folder"
    return {"type": f"{what} ({d.pop('kind')})", **d, "size on disk": disk_usage(path)}


def inspect_path(path) -> dict:
    if "://" in str(path):  # a URL can only name a store
        return inspect_store(Location(path))
    path = Path(path)
    if not path.exists():
        raise CMTError(f"{path} does not exist; pass a trajectory store, a model.ckpt or a teacher/student folder")
    if path.is_dir() and (path / PLAN).exists():
        return inspect_store(Location(path))
    if is_checkpoint(path):
        return inspect_checkpoint(path)
    return inspect_network_folder(path)


def trajectory_png(path, out, num: int = 6, vae: str = "") -> None:
    """Rows = the first `num` samples; columns = their stored states from sigma_max down, then x0. States are
    shown as x / sqrt(1 + sigma^2), the variance-preserving scaling, so noisy states stay in display range;
    a latent store's states are decoded by its VAE (or `vae`), so the columns are images."""
    reader = open_store(path, require_complete=False)
    plan = reader.plan
    done = done_shards(reader.root)
    if not done:
        raise CMTError(f"{path} has no finished shard yet; nothing to draw")
    data = read_range(reader, finite=False) if reader.root.exists(MANIFEST) else reader.read_shard(min(done))
    traj = torch.from_numpy(data["traj"][:num].astype(np.float32))
    x0 = torch.from_numpy(data["x0"][:num].astype(np.float32))
    sig = torch.tensor(plan["sigmas"], dtype=torch.float32)
    states = torch.cat([traj, x0[:, None]], 1) / (1 + sig.view(1, -1, 1, 1, 1) ** 2).sqrt()
    c, h, w = plan["shape"]
    if h * w == 1:  # low-dimensional data (gmm2d): draw the paths in the plane instead
        save_scatter(states.reshape(-1, c), out, title=f"{num} trajectories (VP-scaled states)")
    else:
        codec = load_vae(vae, str(path))
        flat = states.reshape(-1, c, h, w)
        save_image_grid(flat if codec is None else codec.decode(flat), out, nrow=states.shape[1])
