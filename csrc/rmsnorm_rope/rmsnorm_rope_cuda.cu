// CUDA kernels of rmsnorm_rope (plain CUDA: no arch-specific feature, so every built arch gets the same code).
//
// Forward and grad_x: one warp per row (head vector); lane k handles the pairs (i, i + d/2) for
// i = k, k + 32, ..., so a rotation pair never leaves its thread, and the row sums are warp reductions.
// grad_weight: blocks of (32 pair columns, 8 row groups) sum dn * xhat over a chunk of rows into a
// [chunks, d] buffer, which a last kernel adds up column by column in chunk order: deterministic, no
// atomics.
#include "common/dispatch.h"
#include "common/warp.cuh"
#include "rmsnorm_rope/rmsnorm_rope_entry.h"
#include "rmsnorm_rope/rmsnorm_rope_math.h"

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace cosmos_engine::rmsnorm_rope {
namespace {

constexpr int kWarp = kWarpSize;
constexpr int kRowsPerBlock = 4;
constexpr int kPairCols = 32;
constexpr int kRowGroups = 8;
constexpr int64_t kDwRowsPerChunk = 2048;

__device__ __forceinline__ int64_t total_rows(const Geometry& g) { return g.batch * g.tokens * g.heads; }

template <typename T, typename W, typename acc>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) fwd_kernel(const FwdParams p) {
  const Geometry& g = p.g;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= total_rows(g)) return;
  const int64_t d = g.dim, h = d / 2;
  const T* x = static_cast<const T*>(p.x) + r * d;
  const W* w = static_cast<const W*>(p.weight);
  T* out = static_cast<T*>(p.out) + r * d;
  acc sum_squares = 0;
  for (int64_t i = lane; i < d; i += kWarp) sum_squares += static_cast<acc>(x[i]) * static_cast<acc>(x[i]);
  const acc rstd = rstd_from_mean_square(warp_sum(sum_squares) / static_cast<acc>(d), static_cast<acc>(p.eps));
  if (g.rope) {
    const int64_t l = (r / g.heads) % g.tokens;
    const acc* cs = static_cast<const acc*>(p.cos) + l * d;
    const acc* sn = static_cast<const acc*>(p.sin) + l * d;
    for (int64_t i = lane; i < h; i += kWarp) {
      acc out_lo, out_hi;
      rotate(static_cast<acc>(x[i]) * rstd * static_cast<acc>(w[i]),
             static_cast<acc>(x[i + h]) * rstd * static_cast<acc>(w[i + h]), cs[i], sn[i], cs[i + h], sn[i + h],
             out_lo, out_hi);
      out[i] = static_cast<T>(out_lo);
      out[i + h] = static_cast<T>(out_hi);
    }
  } else {
    for (int64_t i = lane; i < d; i += kWarp) out[i] = static_cast<T>(static_cast<acc>(x[i]) * rstd * static_cast<acc>(w[i]));
  }
  if (lane == 0) static_cast<acc*>(p.rstd)[r] = rstd;
}

// The backward quantities of the pair (i, i + d/2) of row r.
template <typename T, typename W, typename acc>
struct PairGrads {
  acc dn_lo, dn_hi, xhat_lo, xhat_hi;

  __device__ __forceinline__ PairGrads(const BwdParams& p, int64_t r, int64_t i, acc rstd) {
    const Geometry& g = p.g;
    const int64_t d = g.dim, h = d / 2;
    const T* x = static_cast<const T*>(p.x) + r * d;
    const T* grad_out = static_cast<const T*>(p.grad_out) + r * d;
    dn_lo = static_cast<acc>(grad_out[i]);
    dn_hi = static_cast<acc>(grad_out[i + h]);
    if (g.rope) {
      const int64_t l = (r / g.heads) % g.tokens;
      const acc* cs = static_cast<const acc*>(p.cos) + l * d;
      const acc* sn = static_cast<const acc*>(p.sin) + l * d;
      rotate_adjoint(dn_lo, dn_hi, cs[i], sn[i], cs[i + h], sn[i + h], dn_lo, dn_hi);
    }
    xhat_lo = static_cast<acc>(x[i]) * rstd;
    xhat_hi = static_cast<acc>(x[i + h]) * rstd;
  }
};

template <typename T, typename W, typename acc>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) bwd_dx_kernel(const BwdParams p) {
  const Geometry& g = p.g;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= total_rows(g)) return;
  const int64_t d = g.dim, h = d / 2;
  const W* w = static_cast<const W*>(p.weight);
  T* grad_x = static_cast<T*>(p.grad_x) + r * d;
  const acc rstd = static_cast<const acc*>(p.rstd)[r];
  acc sum_dxhat_xhat = 0;
  for (int64_t i = lane; i < h; i += kWarp) {
    const PairGrads<T, W, acc> q(p, r, i, rstd);
    sum_dxhat_xhat += q.dn_lo * static_cast<acc>(w[i]) * q.xhat_lo + q.dn_hi * static_cast<acc>(w[i + h]) * q.xhat_hi;
  }
  const acc mean_dxhat_xhat = warp_sum(sum_dxhat_xhat) / static_cast<acc>(d);
  for (int64_t i = lane; i < h; i += kWarp) {
    const PairGrads<T, W, acc> q(p, r, i, rstd);
    grad_x[i] = static_cast<T>(grad_x_from(q.dn_lo * static_cast<acc>(w[i]), q.xhat_lo, rstd, mean_dxhat_xhat));
    grad_x[i + h] = static_cast<T>(grad_x_from(q.dn_hi * static_cast<acc>(w[i + h]), q.xhat_hi, rstd, mean_dxhat_xhat));
  }
}

// grid (ceil(h / kPairCols), chunks), block (kPairCols, kRowGroups): partial[chunk, d] of dn * xhat.
template <typename T, typename W, typename acc>
__global__ void __launch_bounds__(kPairCols * kRowGroups) bwd_dw_partial_kernel(const BwdParams p, acc* partial) {
  const Geometry& g = p.g;
  __shared__ acc sums[2][kRowGroups][kPairCols];
  const int64_t h = g.dim / 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kPairCols + threadIdx.x;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * kDwRowsPerChunk;
  const int64_t row_end = min(row_begin + kDwRowsPerChunk, total_rows(g));
  acc lo = 0, hi = 0;
  if (i < h) {
    for (int64_t r = row_begin + threadIdx.y; r < row_end; r += kRowGroups) {
      const PairGrads<T, W, acc> q(p, r, i, static_cast<const acc*>(p.rstd)[r]);
      lo += q.dn_lo * q.xhat_lo;
      hi += q.dn_hi * q.xhat_hi;
    }
  }
  sums[0][threadIdx.y][threadIdx.x] = lo;
  sums[1][threadIdx.y][threadIdx.x] = hi;
  __syncthreads();
  if (threadIdx.y < 2 && i < h) {
    acc total = 0;
#pragma unroll
    for (int k = 0; k < kRowGroups; ++k) total += sums[threadIdx.y][k][threadIdx.x];
    partial[blockIdx.y * g.dim + i + threadIdx.y * h] = total;
  }
}

template <typename W, typename acc>
__global__ void bwd_dw_finish_kernel(const acc* partial, int64_t chunks, int64_t d, W* grad_weight) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  acc total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c * d + j];
  grad_weight[j] = static_cast<W>(total);
}

unsigned row_blocks(const Geometry& g) {
  return static_cast<unsigned>((g.batch * g.tokens * g.heads + kRowsPerBlock - 1) / kRowsPerBlock);
}

std::tuple<at::Tensor, at::Tensor> rmsnorm_rope_fwd_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                         const std::optional<at::Tensor>& cos,
                                                         const std::optional<at::Tensor>& sin, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  FwdCall c = prepare_fwd(x, weight, cos, sin, eps);
  if (c.out.numel() == 0) return {c.out, c.rstd};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  COSMOS_DISPATCH_FLOATING(c.x.scalar_type(), "rmsnorm_rope", [&] {
    COSMOS_DISPATCH_MOD(c.weight.scalar_type(), scalar_t, "rmsnorm_rope", [&] {
      fwd_kernel<scalar_t, mod_t, at::opmath_type<scalar_t>>
          <<<row_blocks(c.params.g), kRowsPerBlock * kWarp, 0, stream>>>(c.params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {c.out, c.rstd};
}

std::tuple<at::Tensor, at::Tensor> rmsnorm_rope_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                         const at::Tensor& weight, const std::optional<at::Tensor>& cos,
                                                         const std::optional<at::Tensor>& sin, const at::Tensor& rstd) {
  const c10::cuda::CUDAGuard guard(x.device());
  BwdCall c = prepare_bwd(grad_out, x, weight, cos, sin, rstd);
  const Geometry& g = c.params.g;
  const int64_t rows = g.batch * g.tokens * g.heads;
  if (rows == 0) return {c.grad_x, c.grad_weight.zero_()};
  const int64_t chunks = (rows + kDwRowsPerChunk - 1) / kDwRowsPerChunk;
  TORCH_CHECK(chunks <= 65535, "rmsnorm_rope: ", rows, " head vectors exceed what one backward launch covers (",
              65535 * kDwRowsPerChunk, "); split the batch");
  const at::Tensor partial = at::empty({chunks, g.dim}, c.x.options().dtype(c.rstd.scalar_type()));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 dw_grid((g.dim / 2 + kPairCols - 1) / kPairCols, chunks);
  const dim3 dw_block(kPairCols, kRowGroups);
  COSMOS_DISPATCH_FLOATING(c.x.scalar_type(), "rmsnorm_rope", [&] {
    COSMOS_DISPATCH_MOD(c.weight.scalar_type(), scalar_t, "rmsnorm_rope", [&] {
      using acc = at::opmath_type<scalar_t>;
      bwd_dx_kernel<scalar_t, mod_t, acc><<<row_blocks(g), kRowsPerBlock * kWarp, 0, stream>>>(c.params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      acc* partial_ptr = partial.mutable_data_ptr<acc>();
      bwd_dw_partial_kernel<scalar_t, mod_t, acc><<<dw_grid, dw_block, 0, stream>>>(c.params, partial_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bwd_dw_finish_kernel<mod_t, acc><<<static_cast<unsigned>((g.dim + 127) / 128), 128, 0, stream>>>(
          partial_ptr, chunks, g.dim, static_cast<mod_t*>(c.params.grad_weight));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {c.grad_x, c.grad_weight};
}

}  // namespace
}  // namespace cosmos_engine::rmsnorm_rope

TORCH_LIBRARY_IMPL(cosmos_engine, CUDA, m) {
  m.impl("rmsnorm_rope_fwd", &cosmos_engine::rmsnorm_rope::rmsnorm_rope_fwd_cuda);
  m.impl("rmsnorm_rope_bwd", &cosmos_engine::rmsnorm_rope::rmsnorm_rope_bwd_cuda);
}
