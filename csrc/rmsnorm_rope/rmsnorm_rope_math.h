// Per-element math of rmsnorm_rope, shared by the CPU and CUDA kernels (COSMOS_HD).
//
// Per row (one head vector of d features, h = d/2), in the accumulation type acc:
//   rstd = 1/sqrt(mean(x^2) + eps),  n_i = x_i * rstd * w_i                        (RMSNorm)
//   out_i = n_i cos_i - n_{i+h} sin_i,  out_{i+h} = n_{i+h} cos_{i+h} + n_i sin_{i+h}   (rotate-half
//   RoPE, i < h); without RoPE out = n. One rounding to x's dtype at the end.
// Backward, with g = dL/dout: the rotation's adjoint gives
//   dn_i = g_i cos_i + g_{i+h} sin_{i+h},   dn_{i+h} = g_{i+h} cos_{i+h} - g_i sin_i,
// then dw_i = sum over rows of dn_i * xhat_i (xhat = x * rstd), dxhat = dn * w and
//   dx = rstd * (dxhat - xhat * mean(dxhat * xhat)).
// Elements i and i+h always travel together, so every function below takes a pair.
#pragma once

#include "common/host_device.h"
#include "common/math.h"

namespace cosmos_engine::rmsnorm_rope {

template <typename acc>
COSMOS_HD acc rstd_from_mean_square(acc mean_square, acc eps) {
  return reciprocal_sqrt(mean_square + eps);
}

// The rotated pair (out_i, out_{i+h}) of the normalized pair (n_lo, n_hi).
template <typename acc>
COSMOS_HD void rotate(acc n_lo, acc n_hi, acc cos_lo, acc sin_lo, acc cos_hi, acc sin_hi, acc& out_lo, acc& out_hi) {
  out_lo = n_lo * cos_lo - n_hi * sin_lo;
  out_hi = n_hi * cos_hi + n_lo * sin_hi;
}

// The adjoint of `rotate`: the gradient pair (dn_i, dn_{i+h}) from (g_i, g_{i+h}).
template <typename acc>
COSMOS_HD void rotate_adjoint(acc g_lo, acc g_hi, acc cos_lo, acc sin_lo, acc cos_hi, acc sin_hi, acc& dn_lo,
                              acc& dn_hi) {
  dn_lo = g_lo * cos_lo + g_hi * sin_hi;
  dn_hi = g_hi * cos_hi - g_lo * sin_lo;
}

template <typename acc>
COSMOS_HD acc grad_x_from(acc dxhat, acc xhat, acc rstd, acc mean_dxhat_xhat) {
  return rstd * (dxhat - xhat * mean_dxhat_xhat);
}

}  // namespace cosmos_engine::rmsnorm_rope
