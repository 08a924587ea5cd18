"""Public fused ops. Models reach a kernel only through these functions.

Each op picks the CUDA kernel, the CPU kernel or the PyTorch reference (`reference.py`) by the device
of its inputs; `force_backend("reference" | "cpu" | "cuda")` overrides the choice inside a `with` block.
"""

from cosmos_engine.ops._backend import force_backend
from cosmos_engine.ops.adaln_layernorm import adaln_layernorm
from cosmos_engine.ops.attention import attention
from cosmos_engine.ops.causal_conv3d import causal_conv3d
from cosmos_engine.ops.gate_residual import gate_residual
from cosmos_engine.ops.rms_norm_silu import rms_norm_silu
from cosmos_engine.ops.rmsnorm_rope import rmsnorm_rope

__all__ = ["adaln_layernorm", "attention", "causal_conv3d", "force_backend", "gate_residual", "rms_norm_silu", "rmsnorm_rope"]
