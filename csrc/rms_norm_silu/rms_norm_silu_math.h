// Per-row math of rms_norm_silu, shared by the CPU and CUDA kernels (COSMOS_HD). Every function is a
// template on the value type V so the CPU kernels can run them on 8-lane vectors and the CUDA kernels
// on scalars.
//
// The Wan2.1 VAE's RMS_norm (official `RMS_norm`, channel_first) is F.normalize over the C channels,
// times sqrt(C), times gamma; optionally SiLU follows. Per row x[0..C), in the accumulation type:
//   scale = sqrt(C) / max(||x||_2, 1e-12)       (F.normalize's floor on the norm, not an eps in a mean)
//   y_c   = x_c * scale * gamma_c
//   out_c = silu ? y_c / (1 + exp(-y_c)) : y_c   (one rounding to x's dtype at the end)
#pragma once

#include "common/host_device.h"

#include <cmath>

namespace cosmos_engine::rms_norm_silu {

// F.normalize's default eps: the smallest norm divided by.
constexpr double kNormFloor = 1e-12;

template <typename acc>
COSMOS_HD acc square_root(acc v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(acc) == 4) return sqrtf(v);
  else return sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// sqrt(C) / max(||x||, floor) from the row's sum of squares. A NaN in the row stays NaN (the comparison
// is false and the NaN norm is kept).
template <typename acc>
COSMOS_HD acc row_scale(acc sum_squares, int64_t channels) {
  const acc norm = square_root(sum_squares);
  return square_root(static_cast<acc>(channels)) / (norm < acc(kNormFloor) ? acc(kNormFloor) : norm);
}

template <typename V, typename acc>
COSMOS_HD V normalized(V x, acc scale, V gamma) {
  return x * scale * gamma;
}

// silu(y) given exp(-y): y * sigmoid(y). For y -> -inf, exp(-y) overflows to inf and the result is -0.
template <typename V>
COSMOS_HD V silu_from_exp(V y, V exp_neg_y) {
  return y / (exp_neg_y + 1);
}

}  // namespace cosmos_engine::rms_norm_silu
