// Host-side argument checking and output allocation for gate_residual, shared by the CPU and CUDA
// entry points, which differ only in the kernels they launch.
#pragma once

#include "gate_residual/gate_residual_params.h"

#include <ATen/core/Tensor.h>

namespace cosmos_engine::gate_residual {

struct FwdCall {
  FwdParams params;
  at::Tensor x, gate, y, out;  // inputs made contiguous where needed, kept alive during the launch
};

struct BwdCall {
  BwdParams params;
  at::Tensor grad_out, gate, y, grad_y, grad_gate;
};

FwdCall prepare_fwd(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, int64_t tokens_per_frame);
BwdCall prepare_bwd(const at::Tensor& grad_out, const at::Tensor& gate, const at::Tensor& y,
                    int64_t tokens_per_frame);

}  // namespace cosmos_engine::gate_residual
