// Per-element math of gate_residual, shared by the CPU and CUDA kernels (COSMOS_HD).
//
// Forward, in the accumulation type acc (fp32, or fp64 for fp64 inputs), one rounding at the end:
//     out = x + gate[f] * y,            f = frame of the token.
// Backward, with g = dL/dout:   dx = g (no kernel: the autograd formula returns g itself),
//     dy = g * gate[f],   dgate[f] = sum over the frame's tokens of g * y.
#pragma once

#include "common/host_device.h"

namespace cosmos_engine::gate_residual {

template <typename acc>
COSMOS_HD acc gated_add(acc x, acc gate, acc y) {
  return x + gate * y;
}

template <typename acc>
COSMOS_HD acc grad_y(acc grad_out, acc gate) {
  return grad_out * gate;
}

template <typename acc>
COSMOS_HD acc grad_gate_term(acc grad_out, acc y) {
  return grad_out * y;
}

}  // namespace cosmos_engine::gate_residual
