// CPU kernels of adaln_layernorm, compiled once per instruction set (adaln_norm_cpu_isa.cpp is built
// as a baseline x86-64 object and, on x86-64, again with AVX2+FMA; adaln_norm_cpu.cpp picks one at run
// time). Everything here lives in the namespace COSMOS_CPU_ISA so the two copies do not collide.
//
// One row (token) at a time, rows split over threads with at::parallel_for. Each row is converted once
// into a thread-local buffer that stays in L1, so the two statistics passes and the output pass read
// memory once. Row loops are `omp simd`: the reductions may be
// reordered into vector lanes, which is what lets them vectorize without -ffast-math.
#pragma once

#include "adaln_norm/adaln_norm_math.h"
#include "adaln_norm/adaln_norm_params.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#ifndef COSMOS_CPU_ISA
#error "define COSMOS_CPU_ISA before including adaln_norm_cpu_kernels.h"
#endif

namespace cosmos_engine::adaln::COSMOS_CPU_ISA {

// Rows per backward work item. Each item owns a [2, D] partial sum of grad_shift/grad_scale; the
// partials of a frame are added in item order, so the result does not depend on the thread count.
constexpr int64_t kBwdRowsPerChunk = 64;

// fp32 row reductions with four independent 8-wide accumulators: one accumulator would make every
// add wait for the previous one (4-cycle latency), which is what limits a plain `omp simd` reduction.
// GCC vector extensions: AVX2 registers in the avx2 build, pairs of SSE registers in the baseline one.
using v8f = float __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float horizontal_sum(v8f v) {
  float s = 0;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

inline float row_sum(const float* __restrict__ x, int64_t n) {
  v8f a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 += load8(x + i);
    a1 += load8(x + i + 8);
    a2 += load8(x + i + 16);
    a3 += load8(x + i + 24);
  }
  float s = horizontal_sum((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += x[i];
  return s;
}

inline float row_sum_squared_deviation(const float* __restrict__ x, float mean, int64_t n) {
  v8f a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const v8f d0 = load8(x + i) - mean, d1 = load8(x + i + 8) - mean;
    const v8f d2 = load8(x + i + 16) - mean, d3 = load8(x + i + 24) - mean;
    a0 += d0 * d0;
    a1 += d1 * d1;
    a2 += d2 * d2;
    a3 += d3 * d3;
  }
  float s = horizontal_sum((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

// fp64 (gradcheck only): plain loops, speed does not matter.
inline double row_sum(const double* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

inline double row_sum_squared_deviation(const double* x, double mean, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
  return s;
}

// The row in the accumulation type: x itself when it already is, else converted into buf.
template <typename T, typename acc>
const acc* row_as_acc(const T* __restrict__ x, acc* __restrict__ buf, int64_t n) {
  if constexpr (std::is_same_v<T, acc>) {
    return x;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc>(x[i]);
    return buf;
  }
}

template <typename T, typename M, typename acc>
void fwd_rows(const FwdParams& p, int64_t row_begin, int64_t row_end, acc* __restrict__ buf) {
  const Geometry& g = p.g;
  const int64_t D = g.dim;
  const acc eps = static_cast<acc>(p.eps);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t b = r / g.tokens, l = r % g.tokens, f = l / g.tokens_per_frame;
    const T* __restrict__ x = static_cast<const T*>(p.x) + b * g.x_batch_stride + l * g.x_token_stride;
    const int64_t mod_offset = b * g.mod_batch_stride + f * g.mod_frame_stride;
    const M* __restrict__ shift = static_cast<const M*>(p.shift) + mod_offset;
    const M* __restrict__ scale = static_cast<const M*>(p.scale) + mod_offset;
    T* __restrict__ out = static_cast<T*>(p.out) + r * D;

    // Two passes over the L1-resident row: exact even when |mean| >> std.
    const acc* __restrict__ row = row_as_acc(x, buf, D);
    const acc mean = row_sum(row, D) / static_cast<acc>(D);
    const acc var = row_sum_squared_deviation(row, mean, D) / static_cast<acc>(D);
    const acc rstd = rstd_from_var(var, eps);
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) {
      const acc xhat = normalize(row[i], mean, rstd);
      out[i] = static_cast<T>(modulate(xhat, static_cast<acc>(shift[i]), static_cast<acc>(scale[i])));
    }
    static_cast<acc*>(p.mean)[r] = mean;
    static_cast<acc*>(p.rstd)[r] = rstd;
  }
}

template <typename T, typename M>
void fwd_cpu(const FwdParams& p) {
  using acc = at::opmath_type<T>;
  const int64_t rows = p.g.batch * p.g.tokens;
  const int64_t grain = std::max<int64_t>(1, 16384 / p.g.dim);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc> buf(p.g.dim);
    fwd_rows<T, M, acc>(p, begin, end, buf.data());
  });
}

// One work item: rows [row_begin, row_end) of one frame. Writes grad_x for those rows and the item's
// partial sums of grad_shift (partial[0:D]) and grad_scale (partial[D:2D]).
template <typename T, typename M, typename acc>
void bwd_chunk(const BwdParams& p, int64_t b, int64_t f, int64_t row_begin, int64_t row_end,
               acc* __restrict__ partial, acc* __restrict__ xhat_buf, acc* __restrict__ dxhat_buf) {
  const Geometry& g = p.g;
  const int64_t D = g.dim;
  const M* __restrict__ scale =
      static_cast<const M*>(p.scale) + b * g.mod_batch_stride + f * g.mod_frame_stride;
  acc* __restrict__ part_shift = partial;
  acc* __restrict__ part_scale = partial + D;
  std::fill(partial, partial + 2 * D, acc(0));
  for (int64_t l = row_begin; l < row_end; ++l) {
    const int64_t r = b * g.tokens + l;
    const T* __restrict__ x = static_cast<const T*>(p.x) + b * g.x_batch_stride + l * g.x_token_stride;
    const T* __restrict__ grad_out =
        static_cast<const T*>(p.grad_out) + b * p.grad_out_batch_stride + l * p.grad_out_token_stride;
    T* __restrict__ grad_x = static_cast<T*>(p.grad_x) + r * D;
    const acc mean = static_cast<const acc*>(p.mean)[r];
    const acc rstd = static_cast<const acc*>(p.rstd)[r];

    // Pass 1: xhat, dxhat, their two row sums, and this row's share of grad_shift/grad_scale.
    acc sum_dxhat = 0, sum_dxhat_xhat = 0;
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
    for (int64_t k = 0; k < D; ++k) {
      const acc go = static_cast<acc>(grad_out[k]);
      const acc xhat = normalize(static_cast<acc>(x[k]), mean, rstd);
      const acc dxhat = grad_xhat(go, static_cast<acc>(scale[k]));
      xhat_buf[k] = xhat;
      dxhat_buf[k] = dxhat;
      sum_dxhat += dxhat;
      sum_dxhat_xhat += dxhat * xhat;
      part_shift[k] += go;
      part_scale[k] += go * xhat;
    }
    // Pass 2: grad_x from the row means.
    const acc mean_dxhat = sum_dxhat / static_cast<acc>(D);
    const acc mean_dxhat_xhat = sum_dxhat_xhat / static_cast<acc>(D);
#pragma omp simd
    for (int64_t k = 0; k < D; ++k) {
      grad_x[k] = static_cast<T>(grad_x_from(dxhat_buf[k], xhat_buf[k], rstd, mean_dxhat, mean_dxhat_xhat));
    }
  }
}

template <typename T, typename M>
void bwd_cpu(const BwdParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const int64_t D = g.dim;
  const int64_t chunks_per_frame = (g.tokens_per_frame + kBwdRowsPerChunk - 1) / kBwdRowsPerChunk;
  const int64_t frames = g.batch * g.frames;
  std::vector<acc> partials(frames * chunks_per_frame * 2 * D);

  at::parallel_for(0, frames * chunks_per_frame, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> xhat_buf(D), dxhat_buf(D);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t frame = item / chunks_per_frame, chunk = item % chunks_per_frame;
      const int64_t b = frame / g.frames, f = frame % g.frames;
      const int64_t row_begin = f * g.tokens_per_frame + chunk * kBwdRowsPerChunk;
      const int64_t row_end = std::min(row_begin + kBwdRowsPerChunk, (f + 1) * g.tokens_per_frame);
      bwd_chunk<T, M, acc>(p, b, f, row_begin, row_end, partials.data() + item * 2 * D,
                           xhat_buf.data(), dxhat_buf.data());
    }
  });

  // Add each frame's partials in chunk order.
  M* grad_shift = static_cast<M*>(p.grad_shift);
  M* grad_scale = static_cast<M*>(p.grad_scale);
  at::parallel_for(0, frames, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> sums(2 * D);
    for (int64_t frame = begin; frame < end; ++frame) {
      std::fill(sums.begin(), sums.end(), acc(0));
      for (int64_t chunk = 0; chunk < chunks_per_frame; ++chunk) {
        const acc* part = partials.data() + (frame * chunks_per_frame + chunk) * 2 * D;
        for (int64_t k = 0; k < 2 * D; ++k) sums[k] += part[k];
      }
      for (int64_t k = 0; k < D; ++k) {
        grad_shift[frame * D + k] = static_cast<M>(sums[k]);
        grad_scale[frame * D + k] = static_cast<M>(sums[D + k]);
      }
    }
  });
}

}  // namespace cosmos_engine::adaln::COSMOS_CPU_ISA
