"""Shared test setup.

* Outputs of every compiled op start as NaN (COSMOS_ENGINE_POISON_OUTPUTS=1), so an unwritten element
  can never pass.
* `@pytest.mark.cuda` tests run only where the CUDA kernels were built and a GPU is present.
* Parity with the official model reads `../shared/reference/tensors` (override with the environment
  variable COSMOS_ENGINE_REFERENCE_TENSORS); where that folder is absent those tests skip and say so.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("COSMOS_ENGINE_POISON_OUTPUTS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (-n N) the workers share the cores: one thread each, for the processes they start too,
    # so that OpenMP's threads never wait on each other across workers. Tests that need 2 threads set them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import cosmos_engine  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(os.environ.get("COSMOS_ENGINE_REFERENCE_TENSORS", REPO_ROOT.parent / "shared" / "reference" / "tensors"))


def pytest_collection_modifyitems(config, items):
    gpu = cosmos_engine.has_cuda_kernels() and torch.cuda.is_available()
    skip_cuda = pytest.mark.skip(reason="needs the CUDA kernels and a GPU")
    for item in items:
        if "cuda" in item.keywords and not gpu:
            item.add_marker(skip_cuda)


def load_reference_case(name: str) -> dict:
    """Load one official reference case (e.g. 'dit_forward_backward.pt'), or skip the test saying why."""
    path = REFERENCE_DIR / name
    if not path.exists():
        pytest.skip(f"reference tensors not found at {path} (set COSMOS_ENGINE_REFERENCE_TENSORS); parity not checked")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def reference_case():
    return load_reference_case


class PickleThatRunsCode:
    """Unpickling this calls print: what a hostile checkpoint's pickle could do; loaders must refuse it."""

    def __reduce__(self):
        return (print, ("this must not run",))
