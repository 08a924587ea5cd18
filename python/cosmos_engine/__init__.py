"""cosmos-engine: post-training and sampling of Cosmos-Predict2.5 Video2World 2B with compiled kernels."""

__version__ = "0.1.0"
__all__ = ["build_info", "has_cuda_kernels", "__version__"]


def __getattr__(name: str):
    # Loaded on first use: importing the package must not import torch (`cosmos-engine check` never needs it).
    if name in ("build_info", "has_cuda_kernels"):
        from cosmos_engine.ops import _library

        return getattr(_library, name)
    raise AttributeError(f"module 'cosmos_engine' has no attribute {name!r}")
