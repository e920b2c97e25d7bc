"""The one training loop every stage uses (pre-, mid- and post-training): Accelerate, EMA, checkpoints, logs.

    train(model, objective, data, cfg, kind=...) -> LoopState

- `objective(model, batch, step) -> (loss, logs)`: see cmt_pipeline/objectives/__init__.py.
- `data`: a BatchSource or a re-iterable of batch dicts: see training/data.py.
- `cfg`: a TrainConfig (or a stage config extending it); recorded as run/config.json.

Resume is exact: before every step torch's global generator is reseeded from (seed, step, rank), stateless
sources serve batch k as a function of (seed, k), and model, optimizer, EMA and step come back from the
checkpoint (training/checkpoint.py, which never unpickles code); so a run stopped after step k and resumed
reproduces the uninterrupted run's losses. Mixed precision is torch's own autocast (and a GradScaler for fp16)
keyed on cfg.mixed_precision, so runs of different precisions can share one process.
Runs unchanged under `accelerate launch` on any number of GPUs or nodes (checkpoints need a shared filesystem).
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import TrainConfig
from ..models.io import save_model
from ..plotting import save_image_grid
from ..devices import AUTOCAST, autocast_precision
from ..errors import CMTError
from ..files import atomic_write_bytes, atomic_write_json
from ..hooks import hold_for_test
from ..seeding import sample_seed
from .checkpoint import load_training_state, resolve_resume, save_training_state
from .data import batch_stream, device_batches
from .ema import EMA, ema_decay

OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}

PAUSE_VARIABLE = "CMT_TEST_PAUSE_AFTER_STEP"  # =N: hold after optimizer step N (hooks.hold_for_test)


@dataclass
class LoopState:
    """What callbacks see after every optimizer step (model and ema unwrapped)."""

    step: int
    steps: int
    accelerator: object
    model: torch.nn.Module
    ema: torch.nn.Module
    run_dir: Path
    metrics: dict = field(default_factory=dict)  # the last logged metrics


def due(s: LoopState, every: int, at_end: bool = True) -> bool:
    """Whether a periodic callback acts after this step: on the main process, every `every` steps (0 = never) and
    at the last step unless at_end is False; one rule, so grids and evaluations land on the same steps."""
    if not s.accelerator.is_main_process:
        return False
    return at_end if s.step == s.steps else bool(every) and s.step % every == 0


class SampleGrid:
    """Callback: every `every` steps (and at the last, unless at_end is False: post-training draws its end as
    samples-{1,2}step.png, which a last grid would duplicate) write sample_fn(ema) as run/samples/step-NNNNNNN.png."""

    def __init__(self, sample_fn, every: int, at_end: bool = True):
        self.sample_fn, self.every, self.at_end = sample_fn, every, at_end

    def __call__(self, s: LoopState):
        if due(s, self.every, self.at_end):
            save_image_grid(self.sample_fn(s.ema), s.run_dir / "samples" / f"step-{s.step:07d}.png")


class EvalLog:
    """Callback: append {"step": step, **measure(ema)} to `path` (a run's eval.jsonl) every `every` steps and at the
    end; `start` measures the initialisation as step 0 on a fresh run, so every curve begins where training did."""

    def __init__(self, measure, path: Path, every: int):
        self.measure_fn, self.path, self.every, self.last = measure, Path(path), every, {}

    def measure(self, model, step: int) -> dict:
        self.last = {"step": step, **self.measure_fn(model)}
        with open(self.path, "a") as f:
            f.write(json.dumps(self.last) + "\n")
        return self.last

    def start(self, model, resume: str | None, is_main_process: bool) -> None:
        run = self.path.parent
        if resume is None and is_main_process and not any((run / "checkpoints").glob("step-*")):
            run.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)
            self.measure(model, 0)

    def __call__(self, s: LoopState):
        if due(s, self.every):
            self.measure(s.ema, s.step)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """LR for 1-based `step`: optional linear warm-up, then constant or linear decay to 0 at cfg.steps."""
    lr = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    return lr * (1 - (step - 1) / cfg.steps) if cfg.lr_schedule == "linear" else lr


def validate(cfg: TrainConfig, world: int) -> None:
    """What depends on the launch (config.py checks each field's own choices and range)."""
    if cfg.batch_size % (world * cfg.grad_accum):
        raise CMTError(f"batch_size {cfg.batch_size} must be a positive multiple of processes x grad_accum = "
                       f"{world * cfg.grad_accum}")


def prepare_run_dir(accelerator, cfg: TrainConfig, kind: str, resume: str | None, data_info: dict) -> None:
    """Refuse to overwrite a run or to resume it with other settings; record the config as run/config.json."""
    run, ckpts = Path(cfg.out), Path(cfg.out) / "checkpoints"
    record = {"kind": kind, "config": asdict(cfg), "data": data_info, "num_processes": accelerator.num_processes,
              "cmt_version": __version__}
    if resume is None and any(ckpts.glob("step-*")):
        raise CMTError(f"{run} already holds a run's checkpoints; pass --resume latest to continue it "
                       "or choose a new --out")
    if resume is not None and (run / "config.json").exists():
        try:
            was = json.loads((run / "config.json").read_text())
            old, old_data = was["config"], was.get("data") or {}
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CMTError(f"{run / 'config.json'} is damaged ({type(e).__name__}), so the run's settings are unknown; "
                           "start a new --out") from e
        # an option added since the run began is absent from its config.json: it ran with that option's default
        defaults = asdict(type(cfg)())
        old = {**{k: defaults[k] for k in defaults.keys() - old.keys()}, **old}
        diff = sorted(k for k, v in record["config"].items()
                      if k not in cfg.runtime_only and json.dumps(old.get(k)) != json.dumps(v))
        if diff:
            raise CMTError(f"cannot resume {run} with different settings {diff} (was "
                           f"{ {k: old.get(k) for k in diff} }); use the original values or a new --out")
        # the same path can hold other data (a store regenerated with another seed): the bytes decide
        then, now = old_data.get("fingerprint"), data_info.get("fingerprint")
        if then and now and then != now:
            raise CMTError(f"cannot resume {run}: it trained on data with fingerprint {then[:16]}, and the data given "
                           f"now has fingerprint {now[:16]}; pass the original data or start a new --out")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", record)


def train(model: torch.nn.Module, objective, data, cfg: TrainConfig, *, kind: str, data_info: dict | None = None,
          resume: str | None = None, callbacks=(), progress: bool = True) -> LoopState:
    """Train `model` in place for cfg.steps optimizer steps; writes run/model.ckpt at the end (see module doc)."""
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available

    run = Path(cfg.out)
    tracker = "tensorboard" if cfg.tensorboard and is_tensorboard_available() else None
    # accelerate's precision is process-wide (a singleton): it stays "no" and the loop applies cfg's itself
    acc = Accelerator(cpu=cfg.device == "cpu", mixed_precision="no", log_with=tracker, project_dir=str(run))
    world, rank = acc.num_processes, acc.process_index
    validate(cfg, world)
    prepare_run_dir(acc, cfg, kind, resume, data_info or {})

    model.train()  # dropout and the training-mode coefficients, even after a step-0 evaluation put it in eval mode
    ema = EMA(model).to(acc.device)
    opt = OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                    weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(model, opt)
    precision = autocast_precision(cfg.mixed_precision, acc.device)
    scaler = torch.amp.GradScaler(acc.device.type, enabled=precision == "fp16")
    parts = acc.unwrap_model(model), ema.model, opt, scaler
    start = 0 if resume is None else load_training_state(resolve_resume(resume, run / "checkpoints"), *parts)
    if acc.is_main_process:
        for log in ("log.jsonl", "eval.jsonl"):  # the loop's log, and a stage's evaluations
            truncate_log(run / log, start)
    if tracker:
        acc.init_trackers("tensorboard")

    stream = device_batches(batch_stream(data, start, rank, world), acc.device)
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and acc.is_main_process), desc=kind,
               unit="step", dynamic_ncols=True)
    state = LoopState(start, cfg.steps, acc, acc.unwrap_model(model), ema.model, run)
    wait, last_log, t_log = 0.0, start, time.perf_counter()
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            batch = next(stream)
            t1 = time.perf_counter()
            torch.manual_seed(sample_seed(cfg.seed, step * world + rank))
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            loss, logs = step_grads(acc, model, objective, batch, step, cfg.grad_accum, precision, scaler)
            scaler.unscale_(opt)
            grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            ema.update(state.model, ema_decay(cfg.ema_decay, cfg.ema_halflife, cfg.batch_size, cfg.ema_rampup, step))
            state.step = step
            wait += t1 - t0

            if step % cfg.log_every == 0 or step == cfg.steps:
                reduced = acc.reduce({"loss": loss, **{k: torch.as_tensor(v, device=acc.device, dtype=torch.float32)
                                                       for k, v in logs.items()}}, "mean")
                now = time.perf_counter()
                state.metrics = {"step": step, **{k: float(v) for k, v in reduced.items()},
                                 "lr": lr_at(cfg, step), "grad_norm": float(grad_norm),
                                 "data_wait": wait / (now - t_log), "steps_per_s": (step - last_log) / (now - t_log),
                                 "samples_per_s": (step - last_log) * cfg.batch_size / (now - t_log)}
                wait, last_log, t_log = 0.0, step, now
                if acc.is_main_process:
                    with open(run / "log.jsonl", "a") as f:
                        f.write(json.dumps(state.metrics) + "\n")
                acc.log({k: v for k, v in state.metrics.items() if k != "step"}, step=step)
                bar.set_postfix(loss=f"{state.metrics['loss']:.4f}", data=f"{state.metrics['data_wait']:.0%}")
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_training_state(acc, run / "checkpoints", step, cfg.keep_checkpoints, *parts)
            for cb in callbacks:
                cb(state)
            hold_for_test(PAUSE_VARIABLE, step)
    finally:
        bar.close()
        if tracker:
            acc.end_training()
    if acc.is_main_process:
        save_model(run / "model.ckpt", kind=kind, model=state.model, ema_model=ema.model, step=state.step,
                   config=asdict(cfg), data=data_info or {})
    acc.wait_for_everyone()
    return state


def step_grads(acc, model, objective, batch, step: int, accum: int, precision: str, scaler):
    """Forward/backward over `accum` micro-batches (gradient sync only on the last), the forward and loss under
    autocast for mixed precision and the fp16 loss scaled; returns the mean loss and logs."""
    micro = [dict(zip(batch, vals)) for vals in zip(*(v.chunk(accum) if torch.is_tensor(v) else [v] * accum
                                                      for v in batch.values()))]
    total, logs = 0.0, {}
    for j, mb in enumerate(micro):
        with acc.no_sync(model) if j < accum - 1 else nullcontext():
            with torch.autocast(acc.device.type, AUTOCAST[precision], enabled=precision != "no"):
                loss, info = objective(model, mb, step)
            acc.backward(scaler.scale(loss / accum))
        total = total + loss.detach() / accum
        for k, v in info.items():
            logs[k] = logs.get(k, 0.0) + torch.as_tensor(v).detach().float() / accum
    return total, logs


def truncate_log(path: Path, step: int) -> None:
    """Keep a run log's lines up to `step` before appending: later ones were left by a run that died after its last
    checkpoint; a line that does not parse (torn by a crash or a full disk) is dropped, with a note."""
    if not path.exists():
        return
    keep, torn = [], 0
    for line in path.read_bytes().decode(errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, TypeError, KeyError, IndexError):  # not JSON, or not a record with a step
            torn += bool(line.strip())
    if torn:
        print(f"note: dropped {torn} unreadable line(s) of {path} (torn by an earlier crash)", file=sys.stderr)
    atomic_write_bytes(path, "".join(keep).encode())
