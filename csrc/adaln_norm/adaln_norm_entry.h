// Host-side argument checking and output allocation for adaln_layernorm, shared by the CPU and CUDA
// entry points, which differ only in the kernels they launch.
#pragma once

#include "adaln_norm/adaln_norm_params.h"

#include <ATen/core/Tensor.h>

#include <tuple>

namespace cosmos_engine::adaln {

struct FwdCall {
  FwdParams params;
  at::Tensor x, out, mean, rstd;  // x keeps the (possibly copied) input alive during the launch
  at::Tensor shift, scale;
};

struct BwdCall {
  BwdParams params;
  at::Tensor grad_out, x, scale, mean, rstd;  // inputs, copied where a layout needed it
  at::Tensor grad_x, grad_shift, grad_scale;
};

FwdCall prepare_fwd(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                    int64_t tokens_per_frame, double eps);
BwdCall prepare_bwd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale,
                    const at::Tensor& mean, const at::Tensor& rstd, int64_t tokens_per_frame);

}  // namespace cosmos_engine::adaln
