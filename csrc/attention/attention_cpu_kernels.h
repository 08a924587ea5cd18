// CPU kernels of attention, compiled once per instruction set (attention_cpu_isa.cpp is built as a
// baseline x86-64 object, again with AVX2+FMA and again with AVX-512F; attention_cpu.cpp picks one at run
// time). Everything lives in the namespace COSMOS_CPU_ISA so the copies do not collide; the packing and
// tile constants too, since they follow the vector width.
//
// Each (batch, head) slice is a set of small GEMMs on fp32 (fp64 for fp64) tiles. K, V (and in the
// backward Q and dO) are first packed per slice into the accumulation type, zero-padded to whole tiles
// and to D rounded up to kNr: rows [L, Dp] for operands read along D, panels [L/kNr, Dp, kNr] for operands
// read across keys. That converts bf16/fp16 once, reads the [B, L, H, D] inputs in place through their
// strides, and lets one register-blocked micro-kernel (6 x 16 with AVX2: 12 ymm accumulators; 12 x 32
// with AVX-512: 24 zmm) serve every product without edge cases. Extra memory: the packed copies and
// the backward's dQ partials, O(B * H * L * D), never an L x L matrix; scores live in per-thread
// [kBlockQ, kBlockK] tiles.
//
// Forward: tasks (b, h, query tile), online softmax over key tiles. Backward, one pass without atomics:
// tasks (b, h, key chunk) loop over the chunk's key tiles and, per key tile, over all query tiles,
// recomputing P from lse once per tile pair for the five GEMMs (S, dP, dV, dK, dQ); dK and dV belong to
// the task, dQ goes to the chunk's own fp32 partial, and the partials are summed in chunk order after.
// Every output element is summed in a fixed order, so the results do not depend on the thread count.
#pragma once

#include "attention/attention_math.h"
#include "attention/attention_params.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define COSMOS_ATTENTION_SIMD 1
#endif

#ifndef COSMOS_CPU_ISA
#error "define COSMOS_CPU_ISA before including attention_cpu_kernels.h"
#endif

namespace cosmos_engine::attention::COSMOS_CPU_ISA {

// The register block of the micro-kernel: kMr rows x kNr columns, two vectors per row, so that the
// accumulators (2 kMr) plus two B vectors and a broadcast fill the register file (16 ymm, 32 zmm).
#if defined(__AVX512F__)
constexpr int64_t kMr = 12;
constexpr int64_t kNr = 32;
#else
constexpr int64_t kMr = 6;
constexpr int64_t kNr = 16;
#endif
// Tiles: the score tile (96 x 96 fp32 = 36 KB), a kNr-key panel of K (8-16 KB at D = 128) and kMr query
// rows (3-6 KB) stay in L1/L2 while the micro-kernel streams; both are multiples of kMr and of kNr.
constexpr int64_t kBlockQ = 96;
constexpr int64_t kBlockK = 96;
static_assert(kBlockQ % kMr == 0 && kBlockK % kMr == 0 && kBlockK % kNr == 0);

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[kMr, kNr] (+)= sum_k A(i, k) * B[k, 0:kNr] with A(i, k) = a[i * a_rs + k * a_cs] and B rows ldb apart.
template <typename acc>
inline void micro_kernel(int64_t kdim, const acc* __restrict__ a, int64_t a_rs, int64_t a_cs,
                         const acc* __restrict__ b, int64_t ldb, acc* __restrict__ c, int64_t ldc, bool accumulate) {
  acc r[kMr][kNr];
  for (int64_t i = 0; i < kMr; ++i)
    for (int64_t j = 0; j < kNr; ++j) r[i][j] = accumulate ? c[i * ldc + j] : acc(0);
  for (int64_t k = 0; k < kdim; ++k) {
    for (int64_t i = 0; i < kMr; ++i) {
      const acc av = a[i * a_rs + k * a_cs];
#pragma omp simd
      for (int64_t j = 0; j < kNr; ++j) r[i][j] += av * b[k * ldb + j];
    }
  }
  for (int64_t i = 0; i < kMr; ++i)
    for (int64_t j = 0; j < kNr; ++j) c[i * ldc + j] = r[i][j];
}

#if defined(COSMOS_ATTENTION_SIMD)
// One float vector of the build's widest instruction set, and the few operations the kernels need on it;
// exp (exp_approx of attention_math.h, same steps and constants) is the only one written per set.
#if defined(__AVX512F__)
using VecF = __m512;
constexpr int64_t kLanes = 16;
inline VecF vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, VecF v) { _mm512_storeu_ps(p, v); }
inline VecF vset1(float x) { return _mm512_set1_ps(x); }
inline VecF vzero() { return _mm512_setzero_ps(); }
inline VecF vadd(VecF a, VecF b) { return _mm512_add_ps(a, b); }
inline VecF vsub(VecF a, VecF b) { return _mm512_sub_ps(a, b); }
inline VecF vmul(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
inline VecF vmax(VecF a, VecF b) { return _mm512_max_ps(a, b); }
inline VecF vmin(VecF a, VecF b) { return _mm512_min_ps(a, b); }
inline VecF vfmadd(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline VecF vfnmadd(VecF a, VecF b, VecF c) { return _mm512_fnmadd_ps(a, b, c); }
inline float hsum(VecF v) { return _mm512_reduce_add_ps(v); }
inline float hmax(VecF v) { return _mm512_reduce_max_ps(v); }
// e_r * 2^n (n integral) by scalef, zeroed where x < kLow (and for -inf).
inline VecF vscale_pow2(VecF e_r, VecF n, VecF x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, vset1(exp_const::kLow), _CMP_GE_OQ);
  return _mm512_maskz_scalef_ps(keep, e_r, n);
}
#else
using VecF = __m256;
constexpr int64_t kLanes = 8;
inline VecF vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, VecF v) { _mm256_storeu_ps(p, v); }
inline VecF vset1(float x) { return _mm256_set1_ps(x); }
inline VecF vzero() { return _mm256_setzero_ps(); }
inline VecF vadd(VecF a, VecF b) { return _mm256_add_ps(a, b); }
inline VecF vsub(VecF a, VecF b) { return _mm256_sub_ps(a, b); }
inline VecF vmul(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
inline VecF vmax(VecF a, VecF b) { return _mm256_max_ps(a, b); }
inline VecF vmin(VecF a, VecF b) { return _mm256_min_ps(a, b); }
inline VecF vfmadd(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
inline VecF vfnmadd(VecF a, VecF b, VecF c) { return _mm256_fnmadd_ps(a, b, c); }
inline float hsum(VecF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float hmax(VecF v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline VecF vscale_pow2(VecF e_r, VecF n, VecF x) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 keep = _mm256_cmp_ps(x, vset1(exp_const::kLow), _CMP_GE_OQ);
  return _mm256_and_ps(keep, _mm256_mul_ps(e_r, _mm256_castsi256_ps(bits)));
}
#endif
static_assert(kNr == 2 * kLanes && kBlockK % kLanes == 0);

template <>
inline void micro_kernel<float>(int64_t kdim, const float* __restrict__ a, int64_t a_rs, int64_t a_cs,
                                const float* __restrict__ b, int64_t ldb, float* __restrict__ c, int64_t ldc,
                                bool accumulate) {
  VecF r[kMr][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) {
    r[i][0] = accumulate ? vload(c + i * ldc) : vzero();
    r[i][1] = accumulate ? vload(c + i * ldc + kLanes) : vzero();
  }
  for (int64_t k = 0; k < kdim; ++k) {
    const VecF b0 = vload(b + k * ldb);
    const VecF b1 = vload(b + k * ldb + kLanes);
    const float* ak = a + k * a_cs;
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      const VecF av = vset1(ak[i * a_rs]);
      r[i][0] = vfmadd(av, b0, r[i][0]);
      r[i][1] = vfmadd(av, b1, r[i][1]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) {
    vstore(c + i * ldc, r[i][0]);
    vstore(c + i * ldc + kLanes, r[i][1]);
  }
}

// exp_approx (attention_math.h) on kLanes lanes.
inline VecF vexp(VecF x) {
  using namespace exp_const;
  const VecF xc = vmin(vmax(x, vset1(kLow)), vset1(kHigh));
  const VecF round = vset1(kRound);
  const VecF n = vsub(vfmadd(xc, vset1(kLog2e), round), round);
  const VecF r = vfnmadd(n, vset1(kLn2Lo), vfnmadd(n, vset1(kLn2Hi), xc));
  VecF poly = vset1(kP0);
  poly = vfmadd(poly, r, vset1(kP1));
  poly = vfmadd(poly, r, vset1(kP2));
  poly = vfmadd(poly, r, vset1(kP3));
  poly = vfmadd(poly, r, vset1(kP4));
  poly = vfmadd(poly, r, vset1(kP5));
  const VecF e_r = vadd(vfmadd(vmul(poly, r), r, r), vset1(1.0f));
  return vscale_pow2(e_r, n, x);
}
#endif

// C[m, n] (+)= A[m, kdim] B[kdim, n] (m a multiple of kMr, n of kNr); column panel p of B starts at
// b + p * b_panel and has rows ldb apart (ldb = kNr, b_panel = kdim * kNr for packed panels; ldb = row
// length, b_panel = kNr for row-major B).
template <typename acc>
void gemm(int64_t m, int64_t n, int64_t kdim, const acc* a, int64_t a_rs, int64_t a_cs, const acc* b, int64_t ldb,
          int64_t b_panel, acc* c, int64_t ldc, bool accumulate) {
  for (int64_t p = 0; p < n / kNr; ++p) {
    for (int64_t i = 0; i < m; i += kMr) {
      micro_kernel<acc>(kdim, a + i * a_rs, a_rs, a_cs, b + p * b_panel, ldb, c + i * ldc + p * kNr, ldc, accumulate);
    }
  }
}

// rows_pad rows of `dim` elements (rows apart by `stride`) into dst [rows_pad, dp], zero beyond rows/dim.
template <typename T, typename acc>
void pack_rows(const T* src, int64_t stride, int64_t rows, int64_t dim, int64_t rows_pad, int64_t dp, acc* dst) {
  for (int64_t r = 0; r < rows_pad; ++r) {
    acc* d = dst + r * dp;
    if (r < rows) {
      const T* s = src + r * stride;
      for (int64_t c = 0; c < dim; ++c) d[c] = static_cast<acc>(s[c]);
      std::fill(d + dim, d + dp, acc(0));
    } else {
      std::fill(d, d + dp, acc(0));
    }
  }
}

// The same rows transposed into panels of kNr rows: dst[r / kNr][c][r % kNr] (rows_pad a multiple of kNr).
template <typename T, typename acc>
void pack_panels(const T* src, int64_t stride, int64_t rows, int64_t dim, int64_t rows_pad, int64_t dp, acc* dst) {
  std::fill(dst, dst + rows_pad * dp, acc(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * stride;
    acc* d = dst + (r / kNr) * dp * kNr + r % kNr;
    for (int64_t c = 0; c < dim; ++c) d[c * kNr] = static_cast<acc>(s[c]);
  }
}

template <typename T>
const T* slice_ptr(const void* base, const Strides& s, int64_t b, int64_t h) {
  return static_cast<const T*>(base) + b * s.batch + h * s.head;
}

// The packed operands of one call: per slice (b, h), `len_pad` rows of dp.
template <typename acc>
struct Packed {
  int64_t len_pad = 0, dp = 0;
  std::vector<acc> data;
  Packed(int64_t slices, int64_t len_pad_, int64_t dp_) : len_pad(len_pad_), dp(dp_), data(slices * len_pad_ * dp_) {}
  acc* slice(int64_t s) { return data.data() + s * len_pad * dp; }
  const acc* tile(int64_t s, int64_t row0) const { return data.data() + s * len_pad * dp + row0 * dp; }
};

// Packs `len` rows of every slice of `src` as rows (into `rows`, if given) and as panels (into `panels`,
// if given), in parallel over (slice, tile of `tile` rows).
template <typename T, typename acc>
void pack_all(const Geometry& g, const void* src, const Strides& st, int64_t len, int64_t tile, Packed<acc>* rows,
              Packed<acc>* panels) {
  const Packed<acc>& layout = rows ? *rows : *panels;
  const int64_t tiles = layout.len_pad / tile;
  at::parallel_for(0, g.batch * g.heads * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / tiles, r0 = (task % tiles) * tile;
      const T* p = slice_ptr<T>(src, st, s / g.heads, s % g.heads) + r0 * st.token;
      const int64_t valid = std::clamp<int64_t>(len - r0, 0, tile);
      if (rows) pack_rows(p, st.token, valid, g.dim, tile, layout.dp, rows->slice(s) + r0 * layout.dp);
      if (panels) pack_panels(p, st.token, valid, g.dim, tile, layout.dp, panels->slice(s) + r0 * layout.dp);
    }
  });
}

// One query row of the forward's online softmax over a score tile s[0:kBlockK] whose columns from `cols`
// on are padding: scores become probabilities (0 on padding), m and l are updated, the row o[0:dp] is
// rescaled.
template <typename acc>
inline void online_softmax_row(acc* __restrict__ s, int64_t cols, acc scale, acc& m, acc& l, acc* __restrict__ o,
                               int64_t dp) {
  std::fill(s + cols, s + kBlockK, -std::numeric_limits<acc>::infinity());
  acc tile_max = -std::numeric_limits<acc>::infinity(), sum = 0;
  acc m_new;
#if defined(COSMOS_ATTENTION_SIMD)
  if constexpr (std::is_same_v<acc, float>) {
    VecF vm = vset1(tile_max);
    for (int64_t j = 0; j < kBlockK; j += kLanes) vm = vmax(vm, vload(s + j));
    tile_max = hmax(vm);
    m_new = running_max(m, tile_max, scale);
    const VecF vscale = vset1(scale), vneg_m = vset1(-m_new);
    VecF vsum = vzero();
    for (int64_t j = 0; j < kBlockK; j += kLanes) {
      const VecF pj = vexp(vfmadd(vload(s + j), vscale, vneg_m));
      vstore(s + j, pj);
      vsum = vadd(vsum, pj);
    }
    sum = hsum(vsum);
  } else
#endif
  {
    for (int64_t j = 0; j < kBlockK; ++j) tile_max = std::max(tile_max, s[j]);
    m_new = running_max(m, tile_max, scale);
    for (int64_t j = 0; j < kBlockK; ++j) {
      s[j] = exp_approx(s[j] * scale - m_new);
      sum += s[j];
    }
  }
  const acc alpha = exp_approx(m - m_new);
  l = l * alpha + sum;
  m = m_new;
  if (alpha != acc(1)) {
#pragma omp simd
    for (int64_t d = 0; d < dp; ++d) o[d] *= alpha;
  }
}

template <typename T, typename Unused>
void fwd_cpu(const FwdParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const acc scale = static_cast<acc>(p.scale);
  const int64_t slices = g.batch * g.heads, dp = round_up(g.dim, kNr);
  Packed<acc> k_panels(slices, round_up(g.kv_len, kBlockK), dp), v_rows(slices, round_up(g.kv_len, kBlockK), dp);
  pack_all<T, acc>(g, p.k, p.sk, g.kv_len, kBlockK, nullptr, &k_panels);
  pack_all<T, acc>(g, p.v, p.sv, g.kv_len, kBlockK, &v_rows, nullptr);
  const int64_t q_tiles = (g.q_len + kBlockQ - 1) / kBlockQ;
  at::parallel_for(0, slices * q_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> q(kBlockQ * dp), o(kBlockQ * dp), s(kBlockQ * kBlockK), m(kBlockQ), l(kBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sl = task / q_tiles, b = sl / g.heads, h = sl % g.heads, q0 = (task % q_tiles) * kBlockQ;
      const int64_t rows = std::min(kBlockQ, g.q_len - q0);
      pack_rows(slice_ptr<T>(p.q, p.sq, b, h) + q0 * p.sq.token, p.sq.token, rows, g.dim, kBlockQ, dp, q.data());
      std::fill(o.begin(), o.end(), acc(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<acc>::infinity());
      std::fill(l.begin(), l.end(), acc(0));
      for (int64_t k0 = 0; k0 < g.kv_len; k0 += kBlockK) {
        const int64_t cols = std::min(kBlockK, g.kv_len - k0);
        gemm<acc>(kBlockQ, kBlockK, dp, q.data(), dp, 1, k_panels.tile(sl, k0), kNr, dp * kNr, s.data(), kBlockK, false);
        // Padding rows (q = 0) keep zero scores and stay out of the softmax; their o rows are never written.
        for (int64_t i = 0; i < rows; ++i) online_softmax_row(s.data() + i * kBlockK, cols, scale, m[i], l[i], o.data() + i * dp, dp);
        gemm<acc>(kBlockQ, dp, kBlockK, s.data(), kBlockK, 1, v_rows.tile(sl, k0), dp, kNr, o.data(), dp, true);
      }
      T* out = static_cast<T*>(p.out);
      acc* lse = static_cast<acc*>(p.lse) + sl * g.q_len + q0;
      for (int64_t i = 0; i < rows; ++i) {
        const acc inv = acc(1) / l[i];
        T* dst = out + ((b * g.q_len + q0 + i) * g.heads + h) * g.dim;
        for (int64_t d = 0; d < g.dim; ++d) dst[d] = static_cast<T>(o[i * dp + d] * inv);
        lse[i] = log_sum_exp(m[i], l[i]);
      }
    }
  });
}

// Scores and their gradients for one (query tile, key tile) pair of the backward: s = Q K^T and
// dpb = dO V^T, then s becomes P (recomputed from lse) and dpb becomes dS = P (dP - dsum). Padding
// query rows have lse = +inf and padding key columns get score -inf, so P is 0 on both.
template <typename acc>
inline void score_grads(const acc* q, const acc* dout, const acc* k_panels, const acc* v_panels, const acc* lse,
                        const acc* dsum, int64_t cols, int64_t dp, acc scale, acc* s, acc* dpb) {
  gemm<acc>(kBlockQ, kBlockK, dp, q, dp, 1, k_panels, kNr, dp * kNr, s, kBlockK, false);
  gemm<acc>(kBlockQ, kBlockK, dp, dout, dp, 1, v_panels, kNr, dp * kNr, dpb, kBlockK, false);
  for (int64_t i = 0; i < kBlockQ; ++i) {
    acc* si = s + i * kBlockK;
    acc* di = dpb + i * kBlockK;
    std::fill(si + cols, si + kBlockK, -std::numeric_limits<acc>::infinity());  // P = 0 on padding keys
    const acc lse_i = lse[i], dsum_i = dsum[i];
#if defined(COSMOS_ATTENTION_SIMD)
    if constexpr (std::is_same_v<acc, float>) {
      const VecF vscale = vset1(scale), vneg_lse = vset1(-lse_i), vdsum = vset1(dsum_i);
      for (int64_t j = 0; j < kBlockK; j += kLanes) {
        const VecF pj = vexp(vfmadd(vload(si + j), vscale, vneg_lse));
        vstore(si + j, pj);
        vstore(di + j, vmul(pj, vsub(vload(di + j), vdsum)));
      }
      continue;
    }
#endif
    for (int64_t j = 0; j < kBlockK; ++j) {
      const acc pj = prob_from_lse(si[j], scale, lse_i);
      si[j] = pj;
      di[j] = grad_score(pj, di[j], dsum_i);
    }
  }
}

// Key chunks per slice in the backward: enough (slice, chunk) tasks to keep kBackwardTasks threads busy
// when there are few slices. A constant, never the thread count, so that the dQ sums keep their order;
// each chunk adds one fp32 [Lq, D] partial of dQ per slice.
constexpr int64_t kBackwardTasks = 8;
inline int64_t backward_key_chunks(int64_t slices, int64_t k_tiles) {
  return std::clamp<int64_t>((kBackwardTasks + slices - 1) / slices, 1, k_tiles);
}

template <typename T, typename Unused>
void bwd_cpu(const BwdParams& p) {
  using acc = at::opmath_type<T>;
  const Geometry& g = p.g;
  const acc scale = static_cast<acc>(p.scale);
  const int64_t slices = g.batch * g.heads, dp = round_up(g.dim, kNr);
  const int64_t lq_pad = round_up(g.q_len, kBlockQ), lk_pad = round_up(g.kv_len, kBlockK);
  Packed<acc> q_rows(slices, lq_pad, dp), do_rows(slices, lq_pad, dp);
  Packed<acc> k_rows(slices, lk_pad, dp), k_panels(slices, lk_pad, dp), v_panels(slices, lk_pad, dp);
  pack_all<T, acc>(g, p.q, p.sq, g.q_len, kBlockQ, &q_rows, nullptr);
  pack_all<T, acc>(g, p.grad_out, p.sdo, g.q_len, kBlockQ, &do_rows, nullptr);
  pack_all<T, acc>(g, p.k, p.sk, g.kv_len, kBlockK, &k_rows, &k_panels);
  pack_all<T, acc>(g, p.v, p.sv, g.kv_len, kBlockK, nullptr, &v_panels);
  // Per query row: lse (+inf on padding rows, so their P is 0) and dsum = dO . out, in the accumulation type.
  std::vector<acc> lse(slices * lq_pad, std::numeric_limits<acc>::infinity()), dsum(slices * lq_pad, acc(0));
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t sl = begin; sl < end; ++sl) {
      const T* dout = slice_ptr<T>(p.grad_out, p.sdo, sl / g.heads, sl % g.heads);
      const T* out = slice_ptr<T>(p.out, p.so, sl / g.heads, sl % g.heads);
      for (int64_t i = 0; i < g.q_len; ++i) {
        acc sum = 0;
        for (int64_t d = 0; d < g.dim; ++d) {
          sum += static_cast<acc>(dout[i * p.sdo.token + d]) * static_cast<acc>(out[i * p.so.token + d]);
        }
        dsum[sl * lq_pad + i] = sum;
        lse[sl * lq_pad + i] = static_cast<const acc*>(p.lse)[sl * g.q_len + i];
      }
    }
  });
  const int64_t q_tiles = lq_pad / kBlockQ, k_tiles = lk_pad / kBlockK;
  // The gradients of `rows` rows of an accumulator [*, dp] into a contiguous [B, L, H, D] output.
  auto store = [&](const std::vector<acc>& src, acc factor, void* dst_base, int64_t len, int64_t sl, int64_t r0,
                   int64_t rows) {
    const int64_t b = sl / g.heads, h = sl % g.heads;
    for (int64_t i = 0; i < rows; ++i) {
      T* dst = static_cast<T*>(dst_base) + ((b * len + r0 + i) * g.heads + h) * g.dim;
      for (int64_t d = 0; d < g.dim; ++d) dst[d] = static_cast<T>(src[i * dp + d] * factor);
    }
  };
  // One pass: tasks (slice, key chunk); per key tile of the chunk, over all query tiles in order, P and dS
  // are computed once and feed dV and dK (the key tile's, owned by the task) and the chunk's own partial
  // dQ. The chunk count depends only on the shapes, and the partials are summed in chunk order, so the
  // result does not depend on the thread count.
  const int64_t chunks = backward_key_chunks(slices, k_tiles), tiles_per_chunk = (k_tiles + chunks - 1) / chunks;
  const auto dq_part = std::make_unique_for_overwrite<acc[]>(slices * chunks * lq_pad * dp);  // zeroed by its task
  auto dq_chunk = [&](int64_t sl, int64_t c) { return dq_part.get() + (sl * chunks + c) * lq_pad * dp; };
  at::parallel_for(0, slices * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> s(kBlockQ * kBlockK), dpb(kBlockQ * kBlockK), dk(kBlockK * dp), dv(kBlockK * dp);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sl = task / chunks, c = task % chunks;
      acc* dq = dq_chunk(sl, c);
      std::fill(dq, dq + lq_pad * dp, acc(0));
      for (int64_t kt = c * tiles_per_chunk; kt < std::min(k_tiles, (c + 1) * tiles_per_chunk); ++kt) {
        const int64_t k0 = kt * kBlockK, cols = std::min(kBlockK, g.kv_len - k0);
        std::fill(dk.begin(), dk.end(), acc(0));
        std::fill(dv.begin(), dv.end(), acc(0));
        for (int64_t q0 = 0; q0 < lq_pad; q0 += kBlockQ) {
          const acc* q = q_rows.tile(sl, q0);
          const acc* dout = do_rows.tile(sl, q0);
          score_grads(q, dout, k_panels.tile(sl, k0), v_panels.tile(sl, k0), lse.data() + sl * lq_pad + q0,
                      dsum.data() + sl * lq_pad + q0, cols, dp, scale, s.data(), dpb.data());
          // dV += P^T dO and dK += dS^T Q: A is the transposed tile (rows = keys: stride 1, columns kBlockK).
          gemm<acc>(kBlockK, dp, kBlockQ, s.data(), 1, kBlockK, dout, dp, kNr, dv.data(), dp, true);
          gemm<acc>(kBlockK, dp, kBlockQ, dpb.data(), 1, kBlockK, q, dp, kNr, dk.data(), dp, true);
          gemm<acc>(kBlockQ, dp, kBlockK, dpb.data(), kBlockK, 1, k_rows.tile(sl, k0), dp, kNr, dq + q0 * dp, dp, true);
        }
        store(dk, scale, p.dk, g.kv_len, sl, k0, cols);
        store(dv, acc(1), p.dv, g.kv_len, sl, k0, cols);
      }
    }
  });
  // dQ = scale * (the chunks' partials summed in chunk order), per (slice, query tile).
  at::parallel_for(0, slices * q_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> dq(kBlockQ * dp);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sl = task / q_tiles, q0 = (task % q_tiles) * kBlockQ;
      std::copy_n(dq_chunk(sl, 0) + q0 * dp, kBlockQ * dp, dq.data());
      for (int64_t c = 1; c < chunks; ++c) {
        const acc* part = dq_chunk(sl, c) + q0 * dp;
#pragma omp simd
        for (int64_t e = 0; e < kBlockQ * dp; ++e) dq[e] += part[e];
      }
      store(dq, scale, p.dq, g.q_len, sl, q0, std::min(kBlockQ, g.q_len - q0));
    }
  });
}

}  // namespace cosmos_engine::attention::COSMOS_CPU_ISA
