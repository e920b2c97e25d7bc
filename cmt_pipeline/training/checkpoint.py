"""The trainer's own state, for resuming: `accelerator.save_state` folders run/checkpoints/step-NNNNNNN, written
into a temporary folder and swapped in when complete (utils.replace_folder); run/checkpoints/latest is a one-line
file naming the newest complete one, replaced atomically. A crash mid-save leaves only a `.tmp-*` folder that
nothing reads. The model a run hands on (model.ckpt) is written and read by models/io.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..utils import CMTError, atomic_write_bytes, replace_folder

LATEST = "latest"


def save_training_state(accelerator, ckpt_dir: Path, step: int, keep: int) -> Path:
    """Collective: every process calls it. Returns the finished checkpoint folder."""
    name = f"step-{step:07d}"
    tmp, final = ckpt_dir / f".tmp-{name}", ckpt_dir / name  # one name for all processes, so not utils.temp_name
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(tmp, final)
        atomic_write_bytes(ckpt_dir / LATEST, (name + "\n").encode())
        for old in sorted(ckpt_dir.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: str, ckpt_dir: Path) -> Path:
    """`latest` -> the folder named by ckpt_dir/latest; anything else must be a checkpoint folder."""
    if resume == LATEST:
        pointer = ckpt_dir / LATEST
        if not pointer.exists():
            raise CMTError(f"--resume latest: no checkpoint in {ckpt_dir}; drop --resume to start a new run")
        path = ckpt_dir / pointer.read_text().strip()
    else:
        path = Path(resume)
    if not path.is_dir() or not (any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))):
        raise CMTError(f"--resume {resume}: {path} is not a training checkpoint folder "
                       "(expected run/checkpoints/step-NNNNNNN as written by the training loop)")
    return path
