// Per-row math of attention, shared by the CPU kernels and any CUDA kernel (COSMOS_HD).
//
// For one query row with scores s_j = q.k_j (scale = D^-1/2), the forward keeps a running maximum m and
// a running sum l over key tiles (online softmax):
//   m' = max(m, scale * max_j s_j),  alpha = exp(m - m'),  p_j = exp(scale * s_j - m'),
//   l' = alpha * l + sum_j p_j,       o' = alpha * o + sum_j p_j v_j,
// and at the end out = o / l and lse = m + log(l). The backward recomputes p_j = exp(scale * s_j - lse)
// and, with dP_j = dO.v_j and dsum = dO.out (= sum_j p_j dP_j), the score gradient dS_j = p_j (dP_j - dsum);
// dQ = scale * dS K, dK = scale * dS^T Q, dV = P^T dO.
#pragma once

#include "common/host_device.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace cosmos_engine::attention {

// exp(x) in float without a libm call, so the CPU row loops vectorize (an exp per score would otherwise
// cost as much as the two GEMMs around it). Cephes' expf: x = n ln2 + r with |r| <= ln2/2 (ln2 split in
// two for exactness), a degree-6 polynomial for e^r, 2^n built in the exponent bits. Relative error about
// 2 ulp; 0 below kExpLow (e^-87.33 is about the smallest normal float) and for -inf. The SIMD kernels
// evaluate the same steps with the same constants 8 (AVX2) or 16 (AVX-512) lanes at a time.
namespace exp_const {
constexpr float kLow = -87.33f, kHigh = 88.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: (t + kRound) - kRound rounds t to nearest
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
}  // namespace exp_const

COSMOS_HD float exp_approx(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  using namespace exp_const;
  const float xc = x < kLow ? kLow : (x > kHigh ? kHigh : x);
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float poly = kP0;
  poly = poly * r + kP1;
  poly = poly * r + kP2;
  poly = poly * r + kP3;
  poly = poly * r + kP4;
  poly = poly * r + kP5;
  const float e_r = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < kLow ? 0.0f : e_r * two_n;
#endif
}

COSMOS_HD double exp_approx(double x) { return std::exp(x); }

// The new running maximum given the old one and the largest unscaled score of the tile.
template <typename acc>
COSMOS_HD acc running_max(acc m, acc tile_max, acc scale) {
  const acc t = tile_max * scale;
  return t > m ? t : m;
}

template <typename acc>
COSMOS_HD acc log_sum_exp(acc m, acc l) {
  return m + std::log(l);
}

// The probability of a score, recomputed in the backward from the forward's lse.
template <typename acc>
COSMOS_HD acc prob_from_lse(acc s, acc scale, acc lse) {
  return exp_approx(s * scale - lse);
}

// dL/ds (before the scale) of a score with probability p and dP = dO.v.
template <typename acc>
COSMOS_HD acc grad_score(acc p, acc dp, acc dsum) {
  return p * (dp - dsum);
}

}  // namespace cosmos_engine::attention
