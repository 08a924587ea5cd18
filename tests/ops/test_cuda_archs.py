"""The run-time arch check: a GPU runs our CUDA kernels only where _C holds a cubin or PTX for it; elsewhere
every op falls back to the PyTorch reference with one warning. No GPU is needed: the build's arch list and
the device's compute capability are faked, and the inputs are fake CUDA tensors (FakeTensorMode)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from cosmos_engine import ops
from cosmos_engine.ops import _backend, _library, reference

# The shipped default list (cmake/torch.cmake) as build_info reports it.
SHIPPED = {"cuda_archs": "8.0,8.6,8.9,9.0a,10.0a,12.0+PTX", "cuda_cubins": "sm_80,sm_86,sm_89,sm_90a,sm_100a,sm_120",
           "cuda_ptx": "compute_120"}


@pytest.fixture
def fake_build(monkeypatch):
    """_C as if built with CUDA kernels for `archs` (default: the shipped list); fresh per-device memo."""
    def build(**archs):
        monkeypatch.setattr(_library, "_INFO", {**_library._INFO, "loaded": True, "cuda": True, **(archs or SHIPPED)})
        monkeypatch.setattr(_backend, "_cuda_device_ok", {})
    build()
    return build


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make cuda:0 report `name` and compute capability `capability`."""
    def gpu(name: str, capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return gpu


@pytest.mark.parametrize("capability, image", [
    ((8, 0), "sm_80"), ((8, 6), "sm_86"), ((8, 7), "sm_86"), ((8, 9), "sm_89"),  # A100, A40, Orin (newer minor), L40S
    ((9, 0), "sm_90a"), ((10, 0), "sm_100a"), ((12, 0), "sm_120"), ((12, 1), "sm_120"),  # H100, B200, RTX 50xx, GB10
    ((13, 0), "compute_120 (PTX, JIT-compiled)"),  # a future GPU JIT-compiles the PTX of the highest arch
    ((7, 5), None), ((10, 3), None), ((11, 0), None),  # T4; sm_100a is for 10.0 only and PTX 12.0 is too new
])
def test_the_shipped_list_maps_each_capability_to_the_image_it_runs(fake_build, capability, image):
    assert _library.cuda_kernel_image(capability) == image


def test_arch_specific_ptx_serves_only_its_own_capability(fake_build):
    fake_build(cuda_archs="9.0a+PTX", cuda_cubins="sm_90a", cuda_ptx="compute_90a")
    assert _library.cuda_kernel_image((9, 0)) == "sm_90a"
    assert _library.cuda_kernel_image((10, 0)) is None and _library.cuda_kernel_image((12, 0)) is None
    fake_build(cuda_archs="8.0+PTX", cuda_cubins="sm_80", cuda_ptx="compute_80")
    assert _library.cuda_kernel_image((9, 0)) == "compute_80 (PTX, JIT-compiled)"
    assert _library.cuda_kernel_image((7, 5)) is None


def _fake_cuda_inputs(op: str):
    x = torch.randn(1, 8, 16, device="cuda")
    if op == "adaln_layernorm":
        return (x, torch.zeros(1, 2, 16, device="cuda"), torch.zeros(1, 2, 16, device="cuda"))
    if op == "gate_residual":
        return (x, torch.ones(1, 2, 16, device="cuda"), torch.randn(1, 8, 16, device="cuda"))
    return (torch.randn(1, 8, 2, 16, device="cuda"), torch.ones(16, device="cuda"))  # rmsnorm_rope


@pytest.mark.parametrize("op", ["adaln_layernorm", "gate_residual", "rmsnorm_rope"])
@pytest.mark.parametrize("gpu, capability, kernel", [("Tesla T4", (7, 5), False), ("NVIDIA H200", (9, 0), True),
                                                     ("NVIDIA L40S", (8, 9), True)])
def test_ops_run_the_kernel_only_where_a_built_arch_fits_and_warn_once_otherwise(
        fake_build, fake_gpu, monkeypatch, caplog, op, gpu, capability, kernel):
    if not _library.is_loaded():
        pytest.skip("needs _C (its fake kernels stand in for the CUDA ones)")
    fake_gpu(gpu, capability)
    calls = []
    real = getattr(reference, op)
    monkeypatch.setattr(reference, op, lambda *a, **k: calls.append(op) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger=_backend.__name__), FakeTensorMode():
        for _ in range(3):
            out = getattr(ops, op)(*_fake_cuda_inputs(op))
            assert out.device.type == "cuda"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if kernel:
        assert calls == [] and warnings == []
        assert _backend.select(torch.device("cuda", 0)) == "cuda"
    else:
        assert calls == [op] * 3
        assert len(warnings) == 1, warnings
        assert gpu in warnings[0] and "7.5" in warnings[0] and SHIPPED["cuda_cubins"] in warnings[0]
        assert "PyTorch reference" in warnings[0] and "TORCH_CUDA_ARCH_LIST=7.5" in warnings[0]


def test_forcing_cuda_on_a_gpu_without_a_fitting_arch_fails_clearly(fake_build, fake_gpu):
    fake_gpu("Tesla T4", (7, 5))
    if not _library.is_loaded():
        pytest.skip("force_backend needs _C")
    with ops.force_backend("cuda"), pytest.raises(RuntimeError, match="Tesla T4 cannot run the CUDA kernels"):
        _backend.select(torch.device("cuda", 0))
