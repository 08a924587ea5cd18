"""What the build reports about itself, and the refusal to run under another torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import cosmos_engine


def test_build_info_is_truthful():
    info = cosmos_engine.build_info()
    assert info["loaded"] and info["torch_version"] == torch.__version__
    assert info["cpu_isa"] in ("avx2", "baseline")
    assert info["attention_cpu_isa"] in ("avx512", info["cpu_isa"])
    assert isinstance(info["cuda"], bool) and info["cuda_reason"]
    if info["cuda"]:
        # One cubin per listed arch (9.0a -> sm_90a), and PTX exactly for the +PTX entries.
        archs = info["cuda_archs"].split(",")
        assert info["cuda_cubins"].split(",") == ["sm_" + a.removesuffix("+PTX").replace(".", "") for a in archs]
        assert [p for p in info["cuda_ptx"].split(",") if p] == [
            "compute_" + a.removesuffix("+PTX").replace(".", "") for a in archs if a.endswith("+PTX")]
    else:
        assert info["cuda_archs"] == info["cuda_cubins"] == info["cuda_ptx"] == ""
    # The op table comes from the dispatcher, not from a list we maintain.
    assert info["ops"]["adaln_layernorm_fwd"] == {"cpu": True, "cuda": info["cuda"]}
    assert info["ops"]["adaln_layernorm_bwd"] == {"cpu": True, "cuda": info["cuda"]}
    assert cosmos_engine.has_cuda_kernels() == info["cuda"]


def test_import_under_another_torch_fails_clearly():
    code = "import torch; torch.__version__ = '0.0.1+other'; import cosmos_engine.ops"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"was built against torch {torch.__version__} but torch 0.0.1+other is running" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr


def test_skipping_the_extension_falls_back_to_the_reference():
    code = ("import torch, cosmos_engine; from cosmos_engine import ops; info = cosmos_engine.build_info(); "
            "assert not info['loaded'] and 'COSMOS_ENGINE_SKIP_EXTENSION' in info['why'], info; "
            "x = torch.randn(1, 4, 8); s = torch.zeros(1, 2, 8); "
            "print(ops.adaln_layernorm(x, s, s).shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "COSMOS_ENGINE_SKIP_EXTENSION": "1"})
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 4, 8])" in result.stdout


def test_the_package_metadata_pins_exactly_the_building_torch():
    """cmake/wheel_metadata.py (the scikit-build-core provider of `dependencies`) pins the torch distribution
    that builds, and refuses a second torch requirement among the others."""
    import importlib.metadata
    import importlib.util
    import tomllib

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("wheel_metadata", REPO_ROOT / "cmake" / "wheel_metadata.py")
    provider = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(provider)
    settings = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]["metadata"]["dependencies"]
    deps = provider.dynamic_metadata("dependencies", settings)
    assert deps[0] == f"torch=={importlib.metadata.version('torch')}"
    assert deps[1:] == settings["others"] and any(d.startswith("transformers>=") for d in deps)
    with pytest.raises(ValueError, match="it is pinned to the building torch"):
        provider.dynamic_metadata("dependencies", {"others": ["torch>=2.9"]})
