"""No host-device sync inside the solver loop, so the host can queue steps ahead of the device.

With CUDA, torch.cuda.set_sync_debug_mode("error") raises on any sync. Without it, the same solves run on the
"meta" device with a detector for what would sync there: a host value copied to the device (torch.as_tensor /
torch.tensor / .to of host data), a device value read back (.item(), bool(), .tolist(), .cpu()), or an op whose
output size depends on device data (nonzero, masked_select, unique). Meta tensors hold no data, so any read of
values also fails outright.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cmt_pipeline.solvers import SOLVERS, logsnr_grid
from cmt_pipeline.teachers import load_teacher
from conftest import loss_of

DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "equal", "is_nonzero",
                  "_local_scalar_dense"}
HOST_DATA_CONSTRUCTORS = {torch.as_tensor, torch.tensor, torch.from_numpy}


def tensors(args, kwargs):
    return [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]


class FunctionSyncs(TorchFunctionMode):
    """Host data made into a device tensor: invisible below torch's Python layer, hence a function mode."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_DATA_CONSTRUCTORS and torch.device(kwargs.get("device") or "cpu") == self.device \
                and not (args and isinstance(args[0], torch.Tensor) and args[0].device == self.device):
            raise AssertionError(f"host-device sync: {func.__name__} of host data onto {self.device}")
        return func(*args, **kwargs)


class DispatchSyncs(TorchDispatchMode):
    """Copies across host and device, reads of device values and data-dependent shapes, at the aten level."""

    def __init__(self, device):
        super().__init__()
        self.device = torch.device(device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        devices = {t.device.type for t in tensors(args, kwargs)}
        if name in DATA_DEPENDENT and self.device.type in devices:
            raise AssertionError(f"host-device sync: {name} on {self.device}")
        if name in ("_to_copy", "copy_", "_copy_from"):
            dst = kwargs.get("device") or (args[0].device if name == "copy_" else None)
            src = args[1].device if name == "copy_" else args[0].device
            if dst is not None and {torch.device(dst).type, src.type} == {"cpu", self.device.type}:
                raise AssertionError(f"host-device sync: {name} {src} -> {dst}")
        return func(*args, **kwargs)


@contextmanager
def no_syncs(device):
    """Raise on a host-device sync on `device` inside the block: CUDA's own sync detector there, the modes above on
    meta (AssertionError naming the sync)."""
    if torch.device(device).type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return
    with FunctionSyncs(device), DispatchSyncs(device):
        yield


DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("name", ["digits", "gmm", "vp", "guided", "edm2", "dit"])
def test_solver_loop_has_no_host_device_sync(teachers, name, solver, device):
    teacher = copy.deepcopy(teachers[name]).to(device)  # the shared CPU copy keeps its weights
    x = torch.randn(2, *teacher.shape).to(device)
    labels = torch.tensor([0, 1]).to(device) if teacher.num_classes else None
    sigmas = logsnr_grid(4)
    # warm-up: lazy CUDA and cuDNN setup, and constants a network copies to its device once, may sync once
    SOLVERS[solver](teacher, x, sigmas, labels)
    with no_syncs(device):
        states = SOLVERS[solver](teacher, x, sigmas, labels, return_intermediates=True)
    assert states.shape == (5, *x.shape)


@pytest.mark.parametrize("sync", [lambda x: x.sum().item(), lambda x: bool(x.sum() > 0), lambda x: x.cpu(),
                                  lambda x: torch.as_tensor(0.5, device=x.device), lambda x: torch.nonzero(x),
                                  lambda x: x.sum().tolist(), lambda x: torch.tensor([1.0]).to(x.device)])
def test_the_meta_detector_catches_each_kind_of_sync(sync):
    with pytest.raises(AssertionError, match="host-device sync"):
        with no_syncs("meta"):
            sync(torch.zeros(3, device="meta"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flavour", ["cm", "mf"])
def test_a_mid_training_loss_step_has_no_host_device_sync(flavour, device):
    """The objectives copied their sigma grid to the device and read an unconditional store's labels back at
    every step; a training step now queues without waiting for the device (after a warm-up step)."""
    from cmt_pipeline.models import MeanFlowStudent, consistency_student
    from cmt_pipeline.objectives.cmt import CMTLoss, CMTMeanFlowLoss

    teacher = load_teacher("builtin")
    student = (consistency_student(teacher) if flavour == "cm" else MeanFlowStudent(copy.deepcopy(teacher)))
    student = student.to(device).train()
    sigmas = logsnr_grid(4).double()
    loss = (loss_of(CMTLoss, sigmas=sigmas, points_per_traj=2, off_grid=0.5) if flavour == "cm"
            else loss_of(CMTMeanFlowLoss, sigmas=sigmas, pairs_per_traj=4, off_grid=0.5))
    batch = {"traj": torch.randn(2, 4, 1, 8, 8).to(device), "x0": torch.randn(2, 1, 8, 8).to(device),
             "labels": torch.full((2,), -1).to(device)}
    loss(student, batch, 0)  # warm-up: the grid's one copy to the device
    with no_syncs(device):
        value, _ = loss(student, batch, 1)
    assert value.shape == ()
