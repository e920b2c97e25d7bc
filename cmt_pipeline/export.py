"""Export a student as a diffusers folder that loads and samples with diffusers alone (no cmt installed):

    DIR/model_index.json        FewStepPipeline from DIR/few_step_pipeline.py, preconditioning and sigmas in its config
    DIR/few_step_pipeline.py    the pipeline's code: cmt_pipeline/few_step_pipeline.py, copied verbatim
    DIR/unet/                   a plain diffusers UNet2DModel (class-conditional students keep their label embedding)
    DIR/gap_embedding/          MeanFlow students: the gap embedding, a custom component (its code: the same file)
    DIR/vae/                    latent students: the AutoencoderKL that decodes their samples
    DIR/README.md               the model card

    pipe = DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)

cmt reads such a folder back (teachers/exported.py, dispatched from load_teacher) through the same file, without running
the folder's copy of it. Students of diffusers VP / flow-matching teachers are not exportable: the pipeline holds the
project's EDM networks only. A consistency student of a native network (a published architecture written in cmt,
teachers/native.py) is exported by `export_native` as that network's folder instead:

    DIR/model.safetensors, DIR/cmt_native.json   the network (NativeDenoiser.save)
    DIR/cmt_student.json                         its boundary condition and sampling defaults (teachers/exported.py)
    DIR/vae/, DIR/README.md                      as above

which cmt samples (`cmt sample --ckpt DIR`), rebuilding the network from its own code, not from the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .constants import SIGMA_MAX, SIGMA_MID
from .models import BoundaryDenoiser, MeanFlowStudent
from .paths import not_a_model
from .teachers.edm import EDMDenoiser
from .teachers.exported import GAP_DIR, INDEX, MODULE, STUDENT_FILE, STUDENT_FORMAT, is_export
from .teachers.native import NativeDenoiser
from .errors import CMTError
from .files import atomic_folder

PIPELINE_FILE = Path(__file__).with_name(f"{MODULE}.py")


def to_pipeline(model: torch.nn.Module, vae=None, sigma_max: float = SIGMA_MAX, sigma_mid: float = SIGMA_MID):
    """The FewStepPipeline of a student (a consistency EDMDenoiser or a MeanFlowStudent of one) and its VAE, if any."""
    from diffusers import UNet2DModel

    from .few_step_pipeline import FewStepPipeline, GapEmbedding  # imports diffusers: only when exporting

    net = model.net if isinstance(model, (MeanFlowStudent, BoundaryDenoiser)) else model
    if not isinstance(net, EDMDenoiser):
        raise CMTError(f"cannot export a {type(model).__name__} of a {type(net).__name__}: the exported pipeline holds "
                       "the project's EDM networks only; sample it from its model.ckpt with `cmt sample`")
    unet = UNet2DModel.from_config({k: v for k, v in net.backbone.config.items() if not k.startswith("_")})
    unet.load_state_dict(net.backbone.state_dict())
    gap, extra = None, {"parametrisation": "consistency"}
    if isinstance(model, MeanFlowStudent):
        mlp = model.gap_embeddings[0]
        gap = GapEmbedding(mlp.linear_1.in_features, mlp.linear_2.out_features)
        gap.embedding.load_state_dict(mlp.state_dict())
        extra = {"parametrisation": "meanflow", "gap_scale": model.gap_scale}
    p = net.precond
    return FewStepPipeline(unet.eval(), gap and gap.eval(), vae, sigma_data=p.sigma_data, time_scale=p.time_scale,
                           boundary_sigma=p.boundary_sigma, num_classes=p.num_classes, sigma_max=sigma_max,
                           sigma_mid=sigma_mid, **extra)


def model_card(pipe, ckpt: dict, ckpt_path, command: str) -> str:
    """README.md: the Hub metadata diffusers folders carry, what the student was made from, and what it measured."""
    c = pipe.config
    decoder = "vae/ (AutoencoderKL)" if pipe.vae is not None else "none (pixel space)"
    tags = ["cmt", "consistency-mid-training", "few-step", c.parametrisation,
            *(["class-conditional"] if c.num_classes else []), *(["latent"] if pipe.vae is not None else [])]
    lines = ["---", "library_name: diffusers", "pipeline_tag: unconditional-image-generation", "tags:",
             *(f"- {t}" for t in tags), "---", "",
             f"# A {c.parametrisation} student: {ckpt['kind']} (cmt), 1- or 2-step sampling", "",
             "```python", "import torch", "from diffusers import DiffusionPipeline", "",
             'pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER", trust_remote_code=True)',
             "images = pipe(batch_size=16, num_inference_steps=2, generator=torch.Generator().manual_seed(0)"
             + (", class_labels=0" if c.num_classes else "") + ").images", "```", "",
             f"Needs only torch and diffusers; the pipeline's code is `{PIPELINE_FILE.name}` in this folder. "
             f"Sampling: sigma_max {c.sigma_max:g}, sigma_mid {c.sigma_mid:g} (2 steps); classes: "
             f"{c.num_classes or 'unconditional'}; decoder: {decoder}."]
    return "\n".join(lines + provenance(ckpt, ckpt_path, command))


def native_card(model: BoundaryDenoiser, has_vae: bool, ckpt: dict, ckpt_path, command: str, sigma_max: float,
                sigma_mid: float) -> str:
    """README.md of a native student's folder (export_native): how to sample it with cmt, then as model_card."""
    net = model.net
    decoder = "vae/ (AutoencoderKL)" if has_vae else "none (pixel space)"
    tags = ["cmt", "consistency-mid-training", "few-step", "consistency",
            *(["class-conditional"] if net.num_classes else []), *(["latent"] if has_vae else [])]
    lines = ["---", "library_name: cmt", "tags:", *(f"- {t}" for t in tags), "---", "",
             f"# A consistency student of {net.reference}: {ckpt['kind']} (cmt), 1- or 2-step sampling", "",
             "```", "cmt sample --ckpt THIS_FOLDER --steps 2 --out samples.png"
             + (" --class-labels 0" if net.num_classes else ""), "```", "",
             f"The network is the published {net.reference} architecture as cmt writes it natively "
             f"({STUDENT_FILE}: the boundary condition; cmt_native.json: its constructor arguments); cmt rebuilds it "
             f"from its own code. Sampling: sigma_max {sigma_max:g}, sigma_mid {sigma_mid:g} (2 steps); classes: "
             f"{net.num_classes or 'unconditional'}; decoder: {decoder}."]
    return "\n".join(lines + provenance(ckpt, ckpt_path, command))


def provenance(ckpt: dict, ckpt_path, command: str) -> list[str]:
    """A model card's provenance, metrics and training configuration sections."""
    data = ckpt.get("data") or {}
    lines = ["", "## Provenance", "",
             f"- base teacher: {data.get('teacher') or data.get('init_origin') or 'not recorded'}",
             f"- teacher fingerprint: {data.get('teacher_fingerprint', 'not recorded')}",
             f"- training data: {data.get('store') or data.get('source') or 'not recorded'}",
             f"- training data fingerprint: {data.get('fingerprint', 'not recorded')}",
             f"- checkpoint: {ckpt_path} (kind {ckpt['kind']}, step {ckpt['step']})",
             f"- made by: `{command}`", "", "## Metrics", ""]
    found = [(name, json.loads(f.read_text())) for name in ("metrics.json", "evaluation.json")
             if (f := Path(ckpt_path).with_name(name)).is_file()]
    lines += [f"From `{name}` beside the checkpoint (the protocol is recorded with the numbers):\n\n```json\n"
              f"{json.dumps(rec, indent=2)}\n```\n" for name, rec in found] or ["None recorded beside the checkpoint."]
    lines += ["", "## Training configuration", "", "```json", json.dumps(ckpt.get("config", {}), indent=2), "```", ""]
    return lines


def check_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse to write over anything but a previous export, and over that only when asked to."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not is_export(out_dir) or not_a_model(out_dir):  # a run or a store holding an export's index is no export
        raise CMTError(f"--out {out_dir} is not empty and is not a previous export (cmt export never replaces "
                       "other folders); choose another --out, or pass --overwrite to replace a previous export")
    if not overwrite:
        raise CMTError(f"--out {out_dir} holds a previous export; pass --overwrite to replace it, "
                       "or choose another --out")


def export_pipeline(pipe, out_dir, card: str = "", overwrite: bool = False) -> Path:
    """Write `pipe` (see to_pipeline) and its model card into a temporary folder, then swap it into place
    (files.atomic_folder: the old export is renamed aside before the new one is renamed in)."""
    out_dir = Path(out_dir)
    check_out(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out_dir) as tmp:
        pipe.save_pretrained(tmp)
        index = json.loads((tmp / INDEX).read_text())
        index["_class_name"] = [MODULE, "FewStepPipeline"]
        shutil.copyfile(PIPELINE_FILE, tmp / PIPELINE_FILE.name)
        if pipe.gap_embedding is not None:  # diffusers finds a custom component's code in the component's folder
            index[GAP_DIR] = [MODULE, "GapEmbedding"]
            shutil.copyfile(PIPELINE_FILE, tmp / GAP_DIR / PIPELINE_FILE.name)
        (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(card)
    return out_dir


def native_student(model: torch.nn.Module) -> BoundaryDenoiser | None:
    """`model` when it is a consistency student of a native network (what export_native writes), else None."""
    if isinstance(model, BoundaryDenoiser) and isinstance(model.net, NativeDenoiser):
        return model
    return None


def export_native(model: BoundaryDenoiser, out_dir, card: str = "", overwrite: bool = False, vae=None,
                  sigma_max: float = SIGMA_MAX, sigma_mid: float = SIGMA_MID) -> Path:
    """Write a native consistency student (see native_student) as its network's folder plus its boundary record
    (module doc), swapped into place like export_pipeline."""
    out_dir = Path(out_dir)
    check_out(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    p = model.precond
    record = {"format": STUDENT_FORMAT, "parametrisation": "consistency", "boundary_sigma": p.boundary_sigma,
              "sigma_data": p.sigma_data, "sigma_max": sigma_max, "sigma_mid": sigma_mid}
    with atomic_folder(out_dir) as tmp:
        model.net.save(tmp)
        (tmp / STUDENT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if vae is not None:
            vae.save_pretrained(tmp / "vae")
        (tmp / "README.md").write_text(card)
    return out_dir
