// Host-side argument checking and output allocation for rms_norm_silu, shared by the CPU and CUDA entry
// points, which differ only in the kernels they launch.
#pragma once

#include "rms_norm_silu/rms_norm_silu_params.h"

#include <ATen/core/Tensor.h>

namespace cosmos_engine::rms_norm_silu {

struct FwdCall {
  FwdParams params;
  at::Tensor x_rows, gamma;  // x with its channels innermost (copied only if they were not), gamma [C]
  at::Tensor out;            // x's logical shape, channels-last in memory
};

FwdCall prepare_fwd(const at::Tensor& x, const at::Tensor& gamma, bool silu);

}  // namespace cosmos_engine::rms_norm_silu
