"""Folders written by `cmt export`, read back through the denoiser seam.

Such a folder samples with diffusers alone through its copy of few_step_pipeline.py; cmt reads it with its own
copy of that file (the same code), never running the folder's. A student of a native network (a published
architecture written in cmt, teachers/native.py) is exported instead as that network's folder plus STUDENT_FILE,
its boundary condition: cmt rebuilds it from its own registry, and no code comes from the folder either way.
The writer is export.py, above the students.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Denoiser

MODULE = "few_step_pipeline"  # the pipeline file's module name, as model_index.json names it
GAP_DIR, VAE_DIR = "gap_embedding", "vae"
INDEX = "model_index.json"
STUDENT_FILE = "cmt_student.json"  # a native student: {format, parametrisation, boundary_sigma, sigma_data, ...}
STUDENT_FORMAT = "cmt-native-student/1"


def is_export(path) -> bool:
    """Whether `path` is a folder `cmt export` wrote (its model_index.json names the shipped pipeline file, or it
    holds a native student's STUDENT_FILE)."""
    if (Path(path) / STUDENT_FILE).is_file():
        return True
    try:
        return json.loads((Path(path) / INDEX).read_text()).get("_class_name") == [MODULE, "FewStepPipeline"]
    except (OSError, ValueError, AttributeError):
        return False


class ExportedStudent(Denoiser):
    """An exported folder through the denoiser seam: FewStepPipeline.denoise, the code diffusers runs for it."""

    def __init__(self, pipe):
        super().__init__()
        self.pipe, self.unet, self.gap_embedding = pipe, pipe.unet, pipe.gap_embedding  # modules: .to() moves them
        size = pipe.unet.config.sample_size
        self.shape = (pipe.unet.config.in_channels, *(size if isinstance(size, (list, tuple)) else (size, size)))
        self.num_classes = pipe.config.num_classes

    def forward(self, x, sigma, class_labels=None):
        return self.pipe.denoise(x, sigma, class_labels)

    def describe(self) -> dict:
        cfg = {k: v for k, v in self.pipe.config.items()
               if not k.startswith("_") and k not in self.pipe.components}  # the settings, not the modules
        return {**super().describe(), "kind": "FewStepPipeline", **cfg,
                "parameters": sum(p.numel() for p in self.parameters())}


def load_export(path) -> Denoiser:
    """The student in an exported folder, built from cmt's own copy of the pipeline file (a native student: from
    the native registry, in its boundary-condition wrapper)."""
    path = Path(path)
    if (path / STUDENT_FILE).is_file():
        return load_native_student(path)
    from diffusers import UNet2DModel

    from ..few_step_pipeline import FewStepPipeline, GapEmbedding

    index = json.loads((path / INDEX).read_text())
    config = {k: v for k, v in index.items() if not k.startswith("_") and k not in ("unet", GAP_DIR, VAE_DIR)}
    gap = GapEmbedding.from_pretrained(path / GAP_DIR) if index.get(GAP_DIR, [None])[0] else None
    return ExportedStudent(FewStepPipeline(UNet2DModel.from_pretrained(path / "unet"), gap, **config))


def load_native_student(path: Path) -> Denoiser:
    from ..models.consistency import BoundaryDenoiser  # the student wrapper lives above the teachers
    from .native import NativeDenoiser

    meta = json.loads((path / STUDENT_FILE).read_text())
    if meta.get("format") != STUDENT_FORMAT or meta.get("parametrisation") != "consistency":
        raise ValueError(f"{path / STUDENT_FILE} is not a {STUDENT_FORMAT} consistency student record")
    return BoundaryDenoiser(NativeDenoiser.load(path), meta["boundary_sigma"], meta["sigma_data"])
