// CPU gather of causal_conv3d, compiled once per instruction set (causal_conv3d_cpu_isa.cpp is built as a
// baseline x86-64 object and, on x86-64, again with AVX2+FMA; causal_conv3d_cpu.cpp picks one at run
// time). Everything here lives in the namespace COSMOS_CPU_ISA so the copies do not collide.
//
// One pass writes the padded channels-last input P (see causal_conv3d_params.h) in the accumulation
// dtype: padded rows (b, tp, hp) split over threads; each row is zeros, or its zero border around one row
// of x or of the cache read in place. Channels-last sources are read along C (unit stride, a plain
// widening copy); other layouts along W, so the strided side is the write, into a row that stays in L1.
#pragma once

#include "causal_conv3d/causal_conv3d_math.h"
#include "causal_conv3d/causal_conv3d_params.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#ifndef COSMOS_CPU_ISA
#error "define COSMOS_CPU_ISA before including causal_conv3d_cpu_kernels.h"
#endif

namespace cosmos_engine::causal_conv3d::COSMOS_CPU_ISA {

template <typename T>
void gather_cpu(const GatherParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const int64_t C = g.channels, Tp = padded_frames(g), Hp = padded_height(g), Wp = padded_width(g);
  const int64_t row_len = Wp * C, border = g.pad_w * C;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(row_len, 1));
  at::parallel_for(0, g.batch * Tp * Hp, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (Tp * Hp), tp = (r / Hp) % Tp, hp = r % Hp;
      acc* __restrict__ dst = static_cast<acc*>(p.padded) + r * row_len;
      const RowSource s = row_source(p, b, tp, hp);
      if (s.zero) {
        std::fill(dst, dst + row_len, acc(0));
        continue;
      }
      std::fill(dst, dst + border, acc(0));
      std::fill(dst + row_len - border, dst + row_len, acc(0));
      const T* __restrict__ src = static_cast<const T*>(s.from_cache ? p.cache : p.x) + s.base;
      const Strides5& st = s.from_cache ? p.cs : p.xs;
      acc* __restrict__ mid = dst + border;
      if (st.c == 1) {
        for (int64_t w = 0; w < g.width; ++w) {
          const T* __restrict__ in = src + w * st.w;
          acc* __restrict__ out = mid + w * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) out[c] = static_cast<acc>(in[c]);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const T* __restrict__ in = src + c * st.c;
          for (int64_t w = 0; w < g.width; ++w) mid[w * C + c] = static_cast<acc>(in[w * st.w]);
        }
      }
    }
  });
}

}  // namespace cosmos_engine::causal_conv3d::COSMOS_CPU_ISA
