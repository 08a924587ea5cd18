"""Test tolerances, in one table.

Elementwise ops (adaln_layernorm) are compared against the fp32 reference computed from the same inputs.
fp32: both sides compute in fp32 with different summation orders over D = 2048; the row statistics differ
by a few ulps, amplified by 1/std, so 1e-5 absolute on unit-scale outputs is ~100 ulp of headroom.
bf16/fp16: the kernel and the reference both round the fp32 result once to the output dtype, so they
agree within one output ulp (bf16: 2^-8 relative, fp16: 2^-11) of the largest value; rtol covers one ulp.
Reductions over many tokens (grad_shift/grad_scale sum ~N terms) get an atol that grows with sqrt(N).
"""

from __future__ import annotations

import torch

# dtype -> (atol, rtol) for outputs of elementwise/row ops of unit scale.
ELEMENTWISE = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.bfloat16: (1e-2, 2**-7),
    torch.float16: (2e-3, 2**-10),
}


def reduction_atol(dtype: torch.dtype, terms: int) -> float:
    """atol for a sum of `terms` unit-scale products computed in fp32 (or fp64) in a different order."""
    base = {torch.float64: 1e-13, torch.float32: 2e-6}.get(dtype, 2e-6)
    return base * max(1.0, terms) ** 0.5
