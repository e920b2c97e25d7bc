"""The trainer's own state, for resuming: run/checkpoints/step-NNNNNNN folders, written into a temporary folder and
swapped in when complete (files.replace_folder); run/checkpoints/latest is a one-line file naming the newest
complete one, replaced atomically. A crash mid-save leaves only a `.tmp-*` folder that nothing reads. The model a
run hands on (model.ckpt) is written and read by models/io.py.

Nothing in a checkpoint can run code when it is read back (a checkpoint folder is as untrusted as any download):
the weights are safetensors, the optimizer state is read with torch.load(weights_only=True), the step and the
fp16 gradient scaler are JSON, and no other file in the folder is opened. Random state needs no file: the loop
reseeds before every step from (seed, step, rank).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from ..errors import CMTError, first_line
from ..files import atomic_write_bytes, replace_folder

LATEST = "latest"
FORMAT = "cmt-train-state/1"
MODEL, EMA_WEIGHTS, OPTIMIZER, STATE = "model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"


def save_training_state(accelerator, ckpt_dir: Path, step: int, keep: int, model, ema, optimizer, scaler) -> Path:
    """Collective: every process calls it; the main process writes (the state is the same on every rank).
    Returns the finished checkpoint folder."""
    name = f"step-{step:07d}"
    tmp, final = ckpt_dir / f".tmp-{name}", ckpt_dir / name
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        write_state(tmp, step, model, ema, optimizer, scaler)
        replace_folder(tmp, final)
        atomic_write_bytes(ckpt_dir / LATEST, (name + "\n").encode())
        for old in sorted(ckpt_dir.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def write_state(folder: Path, step: int, model, ema, optimizer, scaler) -> None:
    folder.mkdir()
    save_model(model, str(folder / MODEL))
    save_model(ema, str(folder / EMA_WEIGHTS))
    torch.save(optimizer.state_dict(), folder / OPTIMIZER)
    (folder / STATE).write_text(json.dumps({"format": FORMAT, "step": step, "scaler": scaler.state_dict()}))


def load_training_state(folder: Path, model, ema, optimizer, scaler) -> int:
    """Restore what write_state wrote into the given modules, optimizer and scaler; returns the step."""
    try:
        state = json.loads((folder / STATE).read_text())
        if state.get("format") != FORMAT:
            raise ValueError(f"format {state.get('format')!r}, not {FORMAT}")
        load_model(model, folder / MODEL)
        load_model(ema, folder / EMA_WEIGHTS)
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True))
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        return int(state["step"])
    except Exception as e:  # safetensors, torch and json raise many types for a damaged or foreign file
        raise CMTError(f"cannot resume from {folder}: {first_line(e)}; the checkpoint is damaged, was written for another model or by another version; resume "
                       "from another checkpoint or start a new --out") from e


def resolve_resume(resume: str, ckpt_dir: Path) -> Path:
    """`latest` -> the folder named by ckpt_dir/latest; anything else must be a checkpoint folder."""
    if resume == LATEST:
        pointer = ckpt_dir / LATEST
        if not pointer.exists():
            raise CMTError(f"--resume latest: no checkpoint in {ckpt_dir}; drop --resume to start a new run")
        name = pointer.read_text(errors="replace").strip()
        if not re.fullmatch(r"step-\d+", name):
            raise CMTError(f"{pointer} is damaged (it should name a step-NNNNNNN folder); pass --resume "
                           f"{ckpt_dir}/step-NNNNNNN naming the newest one there")
        path = ckpt_dir / name
    else:
        path = Path(resume)
    if not (path / STATE).is_file():
        raise CMTError(f"--resume {resume}: {path} is not a training checkpoint folder "
                       "(expected run/checkpoints/step-NNNNNNN as written by the training loop)")
    return path
