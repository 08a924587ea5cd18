// CPU kernels of rms_norm_silu, compiled once per instruction set (rms_norm_silu_cpu_isa.cpp is built as
// a baseline x86-64 object and, on x86-64, again with AVX2+FMA; rms_norm_silu_cpu.cpp picks one at run
// time). Everything here lives in the namespace COSMOS_CPU_ISA so the two copies do not collide.
//
// Rows (pixels) split over threads; each row of C channels is converted once into a thread-local fp32
// buffer padded to whole 8-lane vectors with zeros (it stays in L1), reduced with four independent
// accumulators, then normalized, passed through SiLU and rounded back in one pass, so memory is read
// once and written once. The exp of SiLU is an 8-lane polynomial (below) because a scalar expf per
// element would make this memory-bound op compute bound.
#pragma once

#include "rms_norm_silu/rms_norm_silu_math.h"
#include "rms_norm_silu/rms_norm_silu_params.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifndef COSMOS_CPU_ISA
#error "define COSMOS_CPU_ISA before including rms_norm_silu_cpu_kernels.h"
#endif

namespace cosmos_engine::rms_norm_silu::COSMOS_CPU_ISA {

// GCC vector extensions: AVX2 registers in the avx2 build, pairs of SSE registers in the baseline one.
using v8f = float __attribute__((vector_size(32)));
using v8i = int32_t __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

inline v8f splat(float s) { return v8f{} + s; }

// exp(x) on 8 fp32 lanes, within ~2 ulp: x = n ln2 + r with |r| <= ln2/2 (n rounded with the 1.5 * 2^23
// trick, ln2 split in two so n * ln2 is exact), e^r by its Taylor series to degree 7 (truncation error
// r^8/8! < 6e-9 relative), times 2^n built in the exponent bits. x is clamped to where 2^n is a normal
// float; SiLU only needs exp(-y) to saturate there. NaN lanes stay NaN (the comparisons are false).
inline v8f exp8(v8f x) {
  const v8f lo = splat(-87.3f), hi = splat(88.3f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v8f round_magic = splat(12582912.0f);
  const v8f n = (x * 1.44269504088896341f + round_magic) - round_magic;
  const v8f r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  v8f p = splat(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f pow2n;
  std::memcpy(&pow2n, &bits, sizeof pow2n);
  return p * pow2n;
}

inline float sum_squares(const float* __restrict__ x, int64_t n) {  // n a multiple of kLanes
  v8f a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    const v8f x0 = load8(x + i), x1 = load8(x + i + 8), x2 = load8(x + i + 16), x3 = load8(x + i + 24);
    a0 += x0 * x0;
    a1 += x1 * x1;
    a2 += x2 * x2;
    a3 += x3 * x3;
  }
  for (; i < n; i += kLanes) {
    const v8f x0 = load8(x + i);
    a0 += x0 * x0;
  }
  const v8f a = (a0 + a1) + (a2 + a3);
  float s = 0;
  for (int l = 0; l < kLanes; ++l) s += a[l];
  return s;
}

// fp16/bf16/fp32 activations: fp32 math.
template <typename T, typename G>
void fwd_cpu_fp32(const FwdParams& p) {
  const int64_t C = p.channels, padded = (C + kLanes - 1) / kLanes * kLanes;
  std::vector<float> gamma(padded, 0.0f);
  for (int64_t c = 0; c < C; ++c) gamma[c] = static_cast<float>(static_cast<const G*>(p.gamma)[c]);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    // in: the row with zero padding lanes that stay zero; out: the results (padding lanes unused).
    std::vector<float> in(padded, 0.0f), out(padded);
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict__ x = static_cast<const T*>(p.x) + r * C;
      T* __restrict__ y = static_cast<T*>(p.out) + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) in[c] = static_cast<float>(x[c]);
      const float scale = row_scale(sum_squares(in.data(), padded), C);
      for (int64_t c = 0; c < padded; c += kLanes) {
        v8f v = normalized(load8(in.data() + c), scale, load8(gamma.data() + c));
        if (p.silu) v = silu_from_exp(v, exp8(-v));
        store8(out.data() + c, v);
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) y[c] = static_cast<T>(out[c]);
    }
  });
}

// fp64 activations (tests and fp64 model checks only): plain loops, speed does not matter.
template <typename G>
void fwd_cpu_fp64(const FwdParams& p) {
  const int64_t C = p.channels;
  const G* gamma = static_cast<const G*>(p.gamma);
  at::parallel_for(0, p.rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const double* x = static_cast<const double*>(p.x) + r * C;
      double* y = static_cast<double*>(p.out) + r * C;
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += x[c] * x[c];
      const double scale = row_scale(ss, C);
      for (int64_t c = 0; c < C; ++c) {
        const double v = normalized(x[c], scale, static_cast<double>(gamma[c]));
        y[c] = p.silu ? silu_from_exp(v, std::exp(-v)) : v;
      }
    }
  });
}

template <typename T, typename G>
void fwd_cpu(const FwdParams& p) {
  if constexpr (std::is_same_v<T, double>) fwd_cpu_fp64<G>(p);
  else fwd_cpu_fp32<T, G>(p);
}

}  // namespace cosmos_engine::rms_norm_silu::COSMOS_CPU_ISA
