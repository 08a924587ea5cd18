// Per-element math of adaln_layernorm, shared by the CPU and CUDA kernels (COSMOS_HD).
//
// Forward, per row r of x (one token, D features), in the accumulation type acc (fp32, or fp64 for
// fp64 inputs):   mean = sum(x)/D,  var = sum((x-mean)^2)/D  (two passes: no cancellation when
// |mean| >> std),  rstd = 1/sqrt(var + eps),  xhat = (x-mean)*rstd,
//                 out  = xhat * (1 + scale[f]) + shift[f],   f = frame of the row.
// Backward, with g = dL/dout:   dxhat = g * (1 + scale[f]),
//                 dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
//                 dshift[f] = sum over the frame's rows of g,   dscale[f] = sum of g * xhat.
#pragma once

#include "common/host_device.h"
#include "common/math.h"

namespace cosmos_engine::adaln {

template <typename acc>
COSMOS_HD acc rstd_from_var(acc var, acc eps) {
  return reciprocal_sqrt(var + eps);
}

template <typename acc>
COSMOS_HD acc normalize(acc x, acc mean, acc rstd) {
  return (x - mean) * rstd;
}

template <typename acc>
COSMOS_HD acc modulate(acc xhat, acc shift, acc scale) {
  return xhat * (acc(1) + scale) + shift;
}

template <typename acc>
COSMOS_HD acc grad_xhat(acc grad_out, acc scale) {
  return grad_out * (acc(1) + scale);
}

// mean_dxhat = mean over the row of dxhat; mean_dxhat_xhat = mean over the row of dxhat * xhat.
template <typename acc>
COSMOS_HD acc grad_x_from(acc dxhat, acc xhat, acc rstd, acc mean_dxhat, acc mean_dxhat_xhat) {
  return rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
}

}  // namespace cosmos_engine::adaln
