// Host-side argument checking and output allocation for rmsnorm_rope, shared by the CPU and CUDA entry
// points, which differ only in the kernels they launch.
#pragma once

#include "rmsnorm_rope/rmsnorm_rope_params.h"

#include <ATen/core/Tensor.h>

#include <optional>

namespace cosmos_engine::rmsnorm_rope {

struct FwdCall {
  FwdParams params;
  at::Tensor x, weight, cos, sin, out, rstd;  // inputs made contiguous where needed, kept alive
};

struct BwdCall {
  BwdParams params;
  at::Tensor grad_out, x, weight, cos, sin, rstd, grad_x, grad_weight;
};

FwdCall prepare_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& cos,
                    const std::optional<at::Tensor>& sin, double eps);
BwdCall prepare_bwd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                    const at::Tensor& rstd);

}  // namespace cosmos_engine::rmsnorm_rope
