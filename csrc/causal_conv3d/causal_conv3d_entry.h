// Host side of causal_conv3d shared by the CPU and CUDA entry points: argument checks, the padded buffer
// the gather writes, and the convolution through ATen (oneDNN on the CPU, cuDNN on CUDA). The two entry
// points differ only in the gather kernel they launch between prepare() and convolve().
#pragma once

#include "causal_conv3d/causal_conv3d_params.h"

#include <ATen/core/Tensor.h>

#include <optional>

namespace cosmos_engine::causal_conv3d {

struct Call {
  GatherParams params;
  bool gather = false;  // false: x already is the conv input (no past, no padding, no cache frames)
  at::Tensor x, cache;  // the inputs, kept alive during the gather
  at::Tensor conv_input;  // [B, C, past + T, Hp, Wp] as a channels_last_3d view of the padded buffer, or x
  int64_t stride[3] = {1, 1, 1};
};

// Checks every argument (errors name it) and allocates the padded buffer in `compute` dtype (poisoned
// with NaN under COSMOS_ENGINE_POISON_OUTPUTS, so a padded element the gather misses shows in the output).
Call prepare(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
             const std::optional<at::Tensor>& cache_x, at::IntArrayRef padding, at::IntArrayRef stride,
             at::ScalarType compute);

// The unpadded convolution of c.conv_input, returned channels_last_3d in x's dtype.
at::Tensor convolve(const Call& c, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    at::ScalarType compute);

}  // namespace cosmos_engine::causal_conv3d
