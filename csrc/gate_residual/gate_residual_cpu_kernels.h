// CPU kernels of gate_residual, compiled once per instruction set (gate_residual_cpu_isa.cpp is built as
// a baseline x86-64 object and, on x86-64, again with AVX2+FMA; gate_residual_cpu.cpp picks one at run
// time). Everything here lives in the namespace COSMOS_CPU_ISA so the two copies do not collide.
//
// Forward and grad_y: rows (tokens) split over threads, each row one `omp simd` loop that reads its
// inputs once and writes once. grad_gate: work items of kBwdRowsPerChunk rows of one frame, each with its
// own [D] partial sum, added per frame in item order, so the result does not depend on the thread count.
#pragma once

#include "gate_residual/gate_residual_math.h"
#include "gate_residual/gate_residual_params.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#ifndef COSMOS_CPU_ISA
#error "define COSMOS_CPU_ISA before including gate_residual_cpu_kernels.h"
#endif

namespace cosmos_engine::gate_residual::COSMOS_CPU_ISA {

constexpr int64_t kBwdRowsPerChunk = 64;

template <typename T, typename G>
void fwd_cpu(const FwdParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const int64_t D = g.dim;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
  at::parallel_for(0, g.batch * g.tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / g.tokens, f = (r % g.tokens) / g.tokens_per_frame;
      const T* __restrict__ x = static_cast<const T*>(p.x) + r * D;
      const T* __restrict__ y = static_cast<const T*>(p.y) + r * D;
      const G* __restrict__ gate = static_cast<const G*>(p.gate) + (b * g.frames + f) * D;
      T* __restrict__ out = static_cast<T*>(p.out) + r * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) {
        out[i] = static_cast<T>(gated_add(static_cast<acc>(x[i]), static_cast<acc>(gate[i]), static_cast<acc>(y[i])));
      }
    }
  });
}

template <typename T, typename G>
void bwd_cpu(const BwdParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const int64_t D = g.dim;
  const int64_t chunks_per_frame = (g.tokens_per_frame + kBwdRowsPerChunk - 1) / kBwdRowsPerChunk;
  const int64_t frames = g.batch * g.frames;
  std::vector<acc> partials(frames * chunks_per_frame * D);

  at::parallel_for(0, frames * chunks_per_frame, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t frame = item / chunks_per_frame, chunk = item % chunks_per_frame;
      const int64_t b = frame / g.frames, f = frame % g.frames;
      const int64_t row_begin = f * g.tokens_per_frame + chunk * kBwdRowsPerChunk;
      const int64_t row_end = std::min(row_begin + kBwdRowsPerChunk, (f + 1) * g.tokens_per_frame);
      const G* __restrict__ gate = static_cast<const G*>(p.gate) + frame * D;
      acc* __restrict__ partial = partials.data() + item * D;
      std::fill(partial, partial + D, acc(0));
      for (int64_t l = row_begin; l < row_end; ++l) {
        const int64_t r = b * g.tokens + l;
        const T* __restrict__ grad_out = static_cast<const T*>(p.grad_out) + r * D;
        const T* __restrict__ y = static_cast<const T*>(p.y) + r * D;
        T* __restrict__ grad_y_row = static_cast<T*>(p.grad_y) + r * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) {
          const acc go = static_cast<acc>(grad_out[i]);
          grad_y_row[i] = static_cast<T>(grad_y(go, static_cast<acc>(gate[i])));
          partial[i] += grad_gate_term(go, static_cast<acc>(y[i]));
        }
      }
    }
  });

  G* grad_gate = static_cast<G*>(p.grad_gate);
  at::parallel_for(0, frames, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> sums(D);
    for (int64_t frame = begin; frame < end; ++frame) {
      std::fill(sums.begin(), sums.end(), acc(0));
      for (int64_t chunk = 0; chunk < chunks_per_frame; ++chunk) {
        const acc* part = partials.data() + (frame * chunks_per_frame + chunk) * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) sums[i] += part[i];
      }
      for (int64_t i = 0; i < D; ++i) grad_gate[frame * D + i] = static_cast<G>(sums[i]);
    }
  });
}

}  // namespace cosmos_engine::gate_residual::COSMOS_CPU_ISA
