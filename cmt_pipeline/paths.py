"""What a path is, when it is one of this project's outputs but not a model: loaders that are given a trajectory
store, a run folder or a trainer checkpoint where a model belongs say so, and name the model to pass instead,
rather than reporting a corrupt file or a missing teacher."""

from __future__ import annotations

from pathlib import Path


def not_a_model(path) -> str | None:
    """'PATH is <what it is>; use <the model>' for a known non-model output, else None."""
    path = Path(path)
    if path.parent.name == "checkpoints":  # RUN/checkpoints/step-NNNNNNN, or RUN/checkpoints/latest naming one
        what = ("the pointer to a run's newest trainer checkpoint (for --resume latest)" if path.is_file()
                else "a trainer checkpoint (for --resume)")
        return f"{path} is {what}, not a model; {use_model(path.parent.parent)}"
    if path.name == "checkpoints" and path.is_dir():
        return f"{path} holds a run's trainer checkpoints (for --resume), not a model; {use_model(path.parent)}"
    if (path / "plan.json").is_file():
        return (f"{path} is a trajectory store (for mid-train --data, evaluate --store), not a model; "
                "use the model.ckpt of a run trained on it")
    if (path / "pipeline.json").is_file():
        return (f"{path} is a pipeline run folder, not a model; use {path / 'post' / 'model.ckpt'} (the student) "
                f"or {path / 'mid' / 'model.ckpt'}")
    if (path / "model.ckpt").is_file() or (path / "checkpoints").is_dir():
        return f"{path} is a training run folder, not a model; {use_model(path)}"
    return None


def use_model(run: Path) -> str:
    ckpt = run / "model.ckpt"
    return f"use {ckpt}" + ("" if ckpt.is_file() else " once the run has finished")
