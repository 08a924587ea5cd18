// CUDA kernels of adaln_layernorm (plain CUDA: no arch-specific feature, so every built arch gets the same code).
//
// Forward and the grad_x part of the backward: one warp per row (token); lanes stride over the D
// features so every load is coalesced; the row statistics are warp reductions. The row is read three
// times (sum, squared deviations, output); for D = 2048 a block's 4 rows are 16-32 KB and stay in L1.
// grad_shift/grad_scale, in two stages so that a frame's thousands of tokens spread over many blocks:
// blocks of (32 columns, 8 row groups) sum one chunk of a frame's tokens into a [B*T, chunks, 2, D] buffer
// (row groups combined in shared memory in a fixed order), then a last kernel adds each column's chunks
// in chunk order. Deterministic, no atomics.
#include "adaln_norm/adaln_norm_entry.h"
#include "adaln_norm/adaln_norm_math.h"
#include "common/dispatch.h"
#include "common/warp.cuh"

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace cosmos_engine::adaln {
namespace {

constexpr int kWarp = kWarpSize;
constexpr int kRowsPerBlock = 4;      // warps per block in the row kernels
constexpr int kReduceCols = 32;       // columns per block in the grad_shift/grad_scale kernel
constexpr int kReduceRowGroups = 8;   // row groups per block in that kernel
constexpr int64_t kReduceTokensPerChunk = 512;  // tokens of one frame per block in that kernel
constexpr int kFinishThreads = 256;

template <typename T, typename M, typename acc>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) fwd_kernel(const FwdParams p) {
  const Geometry& g = p.g;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= g.batch * g.tokens) return;
  const int64_t b = r / g.tokens, l = r % g.tokens, f = l / g.tokens_per_frame;
  const T* x = static_cast<const T*>(p.x) + b * g.x_batch_stride + l * g.x_token_stride;
  const int64_t mod_offset = b * g.mod_batch_stride + f * g.mod_frame_stride;
  const M* shift = static_cast<const M*>(p.shift) + mod_offset;
  const M* scale = static_cast<const M*>(p.scale) + mod_offset;
  T* out = static_cast<T*>(p.out) + r * g.dim;

  acc sum = 0;
  for (int64_t i = lane; i < g.dim; i += kWarp) sum += static_cast<acc>(x[i]);
  const acc mean = warp_sum(sum) / static_cast<acc>(g.dim);
  acc sq = 0;
  for (int64_t i = lane; i < g.dim; i += kWarp) {
    const acc d = static_cast<acc>(x[i]) - mean;
    sq += d * d;
  }
  const acc rstd = rstd_from_var(warp_sum(sq) / static_cast<acc>(g.dim), static_cast<acc>(p.eps));
  for (int64_t i = lane; i < g.dim; i += kWarp) {
    const acc xhat = normalize(static_cast<acc>(x[i]), mean, rstd);
    out[i] = static_cast<T>(modulate(xhat, static_cast<acc>(shift[i]), static_cast<acc>(scale[i])));
  }
  if (lane == 0) {
    static_cast<acc*>(p.mean)[r] = mean;
    static_cast<acc*>(p.rstd)[r] = rstd;
  }
}

template <typename T, typename M, typename acc>
__global__ void __launch_bounds__(kRowsPerBlock * kWarp) bwd_dx_kernel(const BwdParams p) {
  const Geometry& g = p.g;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= g.batch * g.tokens) return;
  const int64_t b = r / g.tokens, l = r % g.tokens, f = l / g.tokens_per_frame;
  const T* x = static_cast<const T*>(p.x) + b * g.x_batch_stride + l * g.x_token_stride;
  const T* grad_out =
      static_cast<const T*>(p.grad_out) + b * p.grad_out_batch_stride + l * p.grad_out_token_stride;
  const M* scale = static_cast<const M*>(p.scale) + b * g.mod_batch_stride + f * g.mod_frame_stride;
  T* grad_x = static_cast<T*>(p.grad_x) + r * g.dim;
  const acc mean = static_cast<const acc*>(p.mean)[r];
  const acc rstd = static_cast<const acc*>(p.rstd)[r];

  acc sum_dxhat = 0, sum_dxhat_xhat = 0;
  for (int64_t i = lane; i < g.dim; i += kWarp) {
    const acc xhat = normalize(static_cast<acc>(x[i]), mean, rstd);
    const acc dxhat = grad_xhat(static_cast<acc>(grad_out[i]), static_cast<acc>(scale[i]));
    sum_dxhat += dxhat;
    sum_dxhat_xhat += dxhat * xhat;
  }
  const acc mean_dxhat = warp_sum(sum_dxhat) / static_cast<acc>(g.dim);
  const acc mean_dxhat_xhat = warp_sum(sum_dxhat_xhat) / static_cast<acc>(g.dim);
  for (int64_t i = lane; i < g.dim; i += kWarp) {
    const acc xhat = normalize(static_cast<acc>(x[i]), mean, rstd);
    const acc dxhat = grad_xhat(static_cast<acc>(grad_out[i]), static_cast<acc>(scale[i]));
    grad_x[i] = static_cast<T>(grad_x_from(dxhat, xhat, rstd, mean_dxhat, mean_dxhat_xhat));
  }
}

// grid (ceil(D / kReduceCols), chunks per frame, B * T), block (kReduceCols, kReduceRowGroups):
// partial[frame, chunk, 0 | 1, col] = the chunk's sum of grad_out | grad_out * xhat.
template <typename T, typename M, typename acc>
__global__ void __launch_bounds__(kReduceCols * kReduceRowGroups)
    bwd_modulation_partial_kernel(const BwdParams p, acc* partial) {
  const Geometry& g = p.g;
  __shared__ acc sums[2][kReduceRowGroups][kReduceCols];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  const int64_t chunk = blockIdx.y, frame = blockIdx.z;
  const int64_t b = frame / g.frames, f = frame % g.frames;
  const int64_t l_begin = f * g.tokens_per_frame + chunk * kReduceTokensPerChunk;
  const int64_t l_end = min(l_begin + kReduceTokensPerChunk, (f + 1) * g.tokens_per_frame);
  acc sum_go = 0, sum_go_xhat = 0;
  if (col < g.dim) {
    for (int64_t l = l_begin + threadIdx.y; l < l_end; l += kReduceRowGroups) {
      const int64_t r = b * g.tokens + l;
      const acc go = static_cast<acc>(static_cast<const T*>(
          p.grad_out)[b * p.grad_out_batch_stride + l * p.grad_out_token_stride + col]);
      const acc xv = static_cast<acc>(
          static_cast<const T*>(p.x)[b * g.x_batch_stride + l * g.x_token_stride + col]);
      const acc xhat = normalize(xv, static_cast<const acc*>(p.mean)[r], static_cast<const acc*>(p.rstd)[r]);
      sum_go += go;
      sum_go_xhat += go * xhat;
    }
  }
  sums[0][threadIdx.y][threadIdx.x] = sum_go;
  sums[1][threadIdx.y][threadIdx.x] = sum_go_xhat;
  __syncthreads();
  if (threadIdx.y < 2 && col < g.dim) {
    acc total = 0;
#pragma unroll
    for (int k = 0; k < kReduceRowGroups; ++k) total += sums[threadIdx.y][k][threadIdx.x];
    partial[((frame * gridDim.y + chunk) * 2 + threadIdx.y) * g.dim + col] = total;
  }
}

// One thread per (frame, 0 | 1, col): grad_shift | grad_scale = the sum of its chunks, in chunk order.
template <typename M, typename acc>
__global__ void __launch_bounds__(kFinishThreads)
    bwd_modulation_finish_kernel(const BwdParams p, const acc* partial, int64_t chunks) {
  const Geometry& g = p.g;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kFinishThreads + threadIdx.x;
  if (j >= g.batch * g.frames * 2 * g.dim) return;
  const int64_t col = j % g.dim, which = (j / g.dim) % 2, frame = j / (2 * g.dim);
  acc total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[((frame * chunks + c) * 2 + which) * g.dim + col];
  static_cast<M*>(which == 0 ? p.grad_shift : p.grad_scale)[frame * g.dim + col] = static_cast<M>(total);
}

unsigned row_blocks(const Geometry& g) {
  const int64_t rows = g.batch * g.tokens;
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_layernorm_fwd_cuda(
    const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, int64_t tokens_per_frame,
    double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  FwdCall c = prepare_fwd(x, shift, scale, tokens_per_frame, eps);
  if (c.params.g.batch * c.params.g.tokens == 0) return {c.out, c.mean, c.rstd};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  COSMOS_DISPATCH_FLOATING(c.x.scalar_type(), "adaln_layernorm", [&] {
    COSMOS_DISPATCH_MOD(c.scale.scalar_type(), scalar_t, "adaln_layernorm", [&] {
      using acc = at::opmath_type<scalar_t>;
      fwd_kernel<scalar_t, mod_t, acc>
          <<<row_blocks(c.params.g), kRowsPerBlock * kWarp, 0, stream>>>(c.params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {c.out, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_layernorm_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t tokens_per_frame) {
  const c10::cuda::CUDAGuard guard(x.device());
  BwdCall c = prepare_bwd(grad_out, x, scale, mean, rstd, tokens_per_frame);
  const Geometry& g = c.params.g;
  if (g.batch * g.tokens == 0) return {c.grad_x, c.grad_shift.zero_(), c.grad_scale.zero_()};
  const int64_t frame_rows = g.batch * g.frames;
  const int64_t chunks = (g.tokens_per_frame + kReduceTokensPerChunk - 1) / kReduceTokensPerChunk;
  TORCH_CHECK(frame_rows <= 65535, "adaln_layernorm: ", g.batch, " x ", g.frames,
              " modulation rows exceed what one backward launch covers (65535); split the batch");
  TORCH_CHECK(chunks <= 65535, "adaln_layernorm: ", g.tokens_per_frame, " tokens per frame exceed what one backward "
              "launch covers (", 65535 * kReduceTokensPerChunk, ")");
  const at::Tensor partial = at::empty({frame_rows, chunks, 2, g.dim}, c.x.options().dtype(c.mean.scalar_type()));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 reduce_grid((g.dim + kReduceCols - 1) / kReduceCols, chunks, frame_rows);
  const dim3 reduce_block(kReduceCols, kReduceRowGroups);
  const auto finish_blocks = static_cast<unsigned>((frame_rows * 2 * g.dim + kFinishThreads - 1) / kFinishThreads);
  COSMOS_DISPATCH_FLOATING(c.x.scalar_type(), "adaln_layernorm", [&] {
    COSMOS_DISPATCH_MOD(c.scale.scalar_type(), scalar_t, "adaln_layernorm", [&] {
      using acc = at::opmath_type<scalar_t>;
      bwd_dx_kernel<scalar_t, mod_t, acc>
          <<<row_blocks(g), kRowsPerBlock * kWarp, 0, stream>>>(c.params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      acc* partial_ptr = partial.mutable_data_ptr<acc>();
      bwd_modulation_partial_kernel<scalar_t, mod_t, acc><<<reduce_grid, reduce_block, 0, stream>>>(c.params, partial_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bwd_modulation_finish_kernel<mod_t, acc><<<finish_blocks, kFinishThreads, 0, stream>>>(c.params, partial_ptr, chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {c.grad_x, c.grad_shift, c.grad_scale};
}

}  // namespace
}  // namespace cosmos_engine::adaln

TORCH_LIBRARY_IMPL(cosmos_engine, CUDA, m) {
  m.impl("adaln_layernorm_fwd", &cosmos_engine::adaln::adaln_layernorm_fwd_cuda);
  m.impl("adaln_layernorm_bwd", &cosmos_engine::adaln::adaln_layernorm_bwd_cuda);
}
