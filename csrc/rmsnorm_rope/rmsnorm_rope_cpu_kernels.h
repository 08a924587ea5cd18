// CPU kernels of rmsnorm_rope, compiled once per instruction set (rmsnorm_rope_cpu_isa.cpp is built as a
// baseline x86-64 object and, on x86-64, again with AVX2+FMA; rmsnorm_rope_cpu.cpp picks one at run
// time). Everything here lives in the namespace COSMOS_CPU_ISA so the two copies do not collide.
//
// One row is one head vector (d = 128 in the 2B model). Forward: rows split over threads, each read
// twice from L1 (sum of squares, then the output pairs). Backward: work items of kBwdRowsPerChunk rows,
// each with its own [d] partial sum of grad_weight, added in item order, so the result does not depend
// on the thread count.
#pragma once

#include "rmsnorm_rope/rmsnorm_rope_math.h"
#include "rmsnorm_rope/rmsnorm_rope_params.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#ifndef COSMOS_CPU_ISA
#error "define COSMOS_CPU_ISA before including rmsnorm_rope_cpu_kernels.h"
#endif

namespace cosmos_engine::rmsnorm_rope::COSMOS_CPU_ISA {

constexpr int64_t kBwdRowsPerChunk = 256;

template <typename T, typename W>
void fwd_cpu(const FwdParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const int64_t d = g.dim, h = d / 2;
  const acc eps = static_cast<acc>(p.eps);
  const W* __restrict__ w = static_cast<const W*>(p.weight);
  at::parallel_for(0, g.batch * g.tokens * g.heads, std::max<int64_t>(1, 16384 / d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict__ x = static_cast<const T*>(p.x) + r * d;
      T* __restrict__ out = static_cast<T*>(p.out) + r * d;
      acc sum_squares = 0;
#pragma omp simd reduction(+ : sum_squares)
      for (int64_t i = 0; i < d; ++i) sum_squares += static_cast<acc>(x[i]) * static_cast<acc>(x[i]);
      const acc rstd = rstd_from_mean_square(sum_squares / static_cast<acc>(d), eps);
      if (g.rope) {
        const int64_t l = (r / g.heads) % g.tokens;
        const acc* __restrict__ cs = static_cast<const acc*>(p.cos) + l * d;
        const acc* __restrict__ sn = static_cast<const acc*>(p.sin) + l * d;
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) {
          const acc n_lo = static_cast<acc>(x[i]) * rstd * static_cast<acc>(w[i]);
          const acc n_hi = static_cast<acc>(x[i + h]) * rstd * static_cast<acc>(w[i + h]);
          acc out_lo, out_hi;
          rotate(n_lo, n_hi, cs[i], sn[i], cs[i + h], sn[i + h], out_lo, out_hi);
          out[i] = static_cast<T>(out_lo);
          out[i + h] = static_cast<T>(out_hi);
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) out[i] = static_cast<T>(static_cast<acc>(x[i]) * rstd * static_cast<acc>(w[i]));
      }
      static_cast<acc*>(p.rstd)[r] = rstd;
    }
  });
}

// Rows [row_begin, row_end): grad_x, and their grad_weight partial sum in `partial` [d]. kRope is a
// template argument so the row loop has no branch and vectorizes.
template <typename T, typename W, typename acc, bool kRope>
void bwd_chunk(const BwdParams& p, int64_t row_begin, int64_t row_end, acc* __restrict__ partial,
               acc* __restrict__ xhat_buf, acc* __restrict__ dxhat_buf) {
  const Geometry& g = p.g;
  const int64_t d = g.dim, h = d / 2;
  const W* __restrict__ w = static_cast<const W*>(p.weight);
  std::fill(partial, partial + d, acc(0));
  for (int64_t r = row_begin; r < row_end; ++r) {
    const T* __restrict__ x = static_cast<const T*>(p.x) + r * d;
    const T* __restrict__ grad_out = static_cast<const T*>(p.grad_out) + r * d;
    T* __restrict__ grad_x = static_cast<T*>(p.grad_x) + r * d;
    const acc rstd = static_cast<const acc*>(p.rstd)[r];
    const int64_t l = (r / g.heads) % g.tokens;
    const acc* __restrict__ cs = kRope ? static_cast<const acc*>(p.cos) + l * d : nullptr;
    const acc* __restrict__ sn = kRope ? static_cast<const acc*>(p.sin) + l * d : nullptr;
    acc sum_dxhat_xhat = 0;
#pragma omp simd reduction(+ : sum_dxhat_xhat)
    for (int64_t i = 0; i < h; ++i) {
      const acc g_lo = static_cast<acc>(grad_out[i]), g_hi = static_cast<acc>(grad_out[i + h]);
      acc dn_lo = g_lo, dn_hi = g_hi;
      if constexpr (kRope) rotate_adjoint(g_lo, g_hi, cs[i], sn[i], cs[i + h], sn[i + h], dn_lo, dn_hi);
      const acc xhat_lo = static_cast<acc>(x[i]) * rstd, xhat_hi = static_cast<acc>(x[i + h]) * rstd;
      const acc dxhat_lo = dn_lo * static_cast<acc>(w[i]), dxhat_hi = dn_hi * static_cast<acc>(w[i + h]);
      xhat_buf[i] = xhat_lo;
      xhat_buf[i + h] = xhat_hi;
      dxhat_buf[i] = dxhat_lo;
      dxhat_buf[i + h] = dxhat_hi;
      sum_dxhat_xhat += dxhat_lo * xhat_lo + dxhat_hi * xhat_hi;
      partial[i] += dn_lo * xhat_lo;
      partial[i + h] += dn_hi * xhat_hi;
    }
    const acc mean_dxhat_xhat = sum_dxhat_xhat / static_cast<acc>(d);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      grad_x[i] = static_cast<T>(grad_x_from(dxhat_buf[i], xhat_buf[i], rstd, mean_dxhat_xhat));
    }
  }
}

template <typename T, typename W>
void bwd_cpu(const BwdParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const int64_t d = g.dim;
  const int64_t rows = g.batch * g.tokens * g.heads;
  const int64_t chunks = (rows + kBwdRowsPerChunk - 1) / kBwdRowsPerChunk;
  std::vector<acc> partials(chunks * d);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> xhat_buf(d), dxhat_buf(d);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t row_begin = chunk * kBwdRowsPerChunk;
      const int64_t row_end = std::min(row_begin + kBwdRowsPerChunk, rows);
      acc* partial = partials.data() + chunk * d;
      if (g.rope) bwd_chunk<T, W, acc, true>(p, row_begin, row_end, partial, xhat_buf.data(), dxhat_buf.data());
      else bwd_chunk<T, W, acc, false>(p, row_begin, row_end, partial, xhat_buf.data(), dxhat_buf.data());
    }
  });
  W* grad_weight = static_cast<W*>(p.grad_weight);
  for (int64_t i = 0; i < d; ++i) {
    acc sum = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partials[chunk * d + i];
    grad_weight[i] = static_cast<W>(sum);
  }
}

}  // namespace cosmos_engine::rmsnorm_rope::COSMOS_CPU_ISA
