// EXPERIMENT (design b), built only into the AVX2 object: a 6 x 16 register tile (6 output pixels along W,
// 16 output channels) accumulates over the taps and C_in; each tap's source row is found in place
// (cache, x or zero) and out-of-range pixels read a zero vector.
#include "causal_conv3d/causal_conv3d_igemm.h"
#include "causal_conv3d/causal_conv3d_math.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>

namespace cosmos_engine::causal_conv3d::COSMOS_CPU_ISA {
#if defined(__AVX2__) && defined(__FMA__)
void igemm(const IgemmParams& p) {
  const Geometry& g = p.src.g;
  const int64_t C = g.channels, taps = p.kt * p.kh * p.kw, co_blocks = (p.cout + 15) / 16;
  constexpr int kRows = 6;
  const int64_t w_tiles = (p.out_w + kRows - 1) / kRows;
  const int64_t items = g.batch * p.out_t * p.out_h * co_blocks;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const float* rows[kRows];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t cb = item % co_blocks, r = item / co_blocks;
      const int64_t ho = r % p.out_h, to = (r / p.out_h) % p.out_t, b = r / (p.out_h * p.out_t);
      const float* wblock = p.packed_w + cb * taps * C * 16;
      float* out_row = p.out + r * p.out_w * p.cout;
      for (int64_t tile = 0; tile < w_tiles; ++tile) {
        const int64_t wo0 = tile * kRows;
        __m256 acc[kRows][2];
        for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (int64_t it = 0; it < p.kt; ++it) {
          for (int64_t ih = 0; ih < p.kh; ++ih) {
            const RowSource s = row_source(p.src, b, to * p.st + it, ho * p.sh + ih);
            if (s.zero) continue;
            const float* base = static_cast<const float*>(s.from_cache ? p.src.cache : p.src.x) + s.base;
            const int64_t ws = s.from_cache ? p.src.cs.w : p.src.xs.w;
            for (int64_t iw = 0; iw < p.kw; ++iw) {
              for (int i = 0; i < kRows; ++i) {
                const int64_t w = (wo0 + i) * p.sw + iw - g.pad_w;
                rows[i] = (wo0 + i < p.out_w && w >= 0 && w < g.width) ? base + w * ws : p.zeros;
              }
              const float* wt = wblock + ((it * p.kh + ih) * p.kw + iw) * C * 16;
              for (int64_t c = 0; c < C; ++c) {
                const __m256 w0 = _mm256_loadu_ps(wt + c * 16), w1 = _mm256_loadu_ps(wt + c * 16 + 8);
                for (int i = 0; i < kRows; ++i) {
                  const __m256 a = _mm256_broadcast_ss(rows[i] + c);
                  acc[i][0] = _mm256_fmadd_ps(a, w0, acc[i][0]);
                  acc[i][1] = _mm256_fmadd_ps(a, w1, acc[i][1]);
                }
              }
            }
          }
        }
        alignas(32) float tmp[16];
        const int64_t co0 = cb * 16, nco = std::min<int64_t>(16, p.cout - co0);
        for (int i = 0; i < kRows && wo0 + i < p.out_w; ++i) {
          _mm256_store_ps(tmp, acc[i][0]);
          _mm256_store_ps(tmp + 8, acc[i][1]);
          float* o = out_row + (wo0 + i) * p.cout + co0;
          for (int64_t j = 0; j < nco; ++j) o[j] = tmp[j] + (p.bias ? p.bias[co0 + j] : 0.f);
        }
      }
    }
  });
}
#endif
}  // namespace cosmos_engine::causal_conv3d::COSMOS_CPU_ISA
