"""cosmos-engine: post-training and sampling of Cosmos-Predict2.5 Video2World 2B with compiled kernels."""

from cosmos_engine.ops._library import build_info, has_cuda_kernels

__version__ = "0.1.0"
__all__ = ["build_info", "has_cuda_kernels", "__version__"]
