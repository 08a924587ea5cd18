// CUDA kernels of gate_residual (plain CUDA: no arch-specific feature, so every built arch gets the same code).
//
// Forward and grad_y: one thread per element in a grid-stride loop, so loads and stores are coalesced;
// the gate row of an element is found from its token. grad_gate, in two stages so that a frame's
// thousands of tokens spread over many blocks: blocks of (32 columns, 8 row groups) sum one chunk of a
// frame's tokens into a [B*T, chunks, D] buffer (row groups combined in shared memory in a fixed order),
// then a last kernel adds each column's chunks in chunk order. Deterministic, no atomics.
#include "common/dispatch.h"
#include "gate_residual/gate_residual_entry.h"
#include "gate_residual/gate_residual_math.h"

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace cosmos_engine::gate_residual {
namespace {

constexpr int kThreads = 256;
constexpr int kReduceCols = 32;
constexpr int kReduceRowGroups = 8;
constexpr int64_t kReduceTokensPerChunk = 512;  // tokens of one frame per block in the grad_gate kernel

// The index of element i's gate value in the [B, T, D] gate.
__device__ __forceinline__ int64_t gate_index(const Geometry& g, int64_t i) {
  const int64_t r = i / g.dim, d = i % g.dim;
  const int64_t b = r / g.tokens, f = (r % g.tokens) / g.tokens_per_frame;
  return (b * g.frames + f) * g.dim + d;
}

template <typename T, typename G, typename acc>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const FwdParams p) {
  const int64_t n = p.g.batch * p.g.tokens * p.g.dim;
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  const G* gate = static_cast<const G*>(p.gate);
  T* out = static_cast<T*>(p.out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    out[i] = static_cast<T>(gated_add(static_cast<acc>(x[i]), static_cast<acc>(gate[gate_index(p.g, i)]),
                                      static_cast<acc>(y[i])));
  }
}

template <typename T, typename G, typename acc>
__global__ void __launch_bounds__(kThreads) bwd_grad_y_kernel(const BwdParams p) {
  const int64_t n = p.g.batch * p.g.tokens * p.g.dim;
  const T* grad_out = static_cast<const T*>(p.grad_out);
  const G* gate = static_cast<const G*>(p.gate);
  T* grad_y_out = static_cast<T*>(p.grad_y);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    grad_y_out[i] = static_cast<T>(grad_y(static_cast<acc>(grad_out[i]), static_cast<acc>(gate[gate_index(p.g, i)])));
  }
}

// grid (ceil(D / kReduceCols), chunks per frame, B * T), block (kReduceCols, kReduceRowGroups):
// partial[frame, chunk, col] = the chunk's sum of grad_out * y.
template <typename T, typename G, typename acc>
__global__ void __launch_bounds__(kReduceCols * kReduceRowGroups)
    bwd_grad_gate_partial_kernel(const BwdParams p, acc* partial) {
  const Geometry& g = p.g;
  __shared__ acc sums[kReduceRowGroups][kReduceCols];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kReduceCols + threadIdx.x;
  const int64_t chunk = blockIdx.y, frame = blockIdx.z;
  const int64_t b = frame / g.frames, f = frame % g.frames;
  const int64_t l_begin = f * g.tokens_per_frame + chunk * kReduceTokensPerChunk;
  const int64_t l_end = min(l_begin + kReduceTokensPerChunk, (f + 1) * g.tokens_per_frame);
  acc sum = 0;
  if (col < g.dim) {
    for (int64_t l = l_begin + threadIdx.y; l < l_end; l += kReduceRowGroups) {
      const int64_t i = (b * g.tokens + l) * g.dim + col;
      sum += grad_gate_term(static_cast<acc>(static_cast<const T*>(p.grad_out)[i]),
                            static_cast<acc>(static_cast<const T*>(p.y)[i]));
    }
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < g.dim) {
    acc total = 0;
#pragma unroll
    for (int k = 0; k < kReduceRowGroups; ++k) total += sums[k][threadIdx.x];
    partial[(frame * gridDim.y + chunk) * g.dim + col] = total;
  }
}

// One thread per (frame, col): grad_gate = the sum of its chunks, in chunk order.
template <typename G, typename acc>
__global__ void __launch_bounds__(kThreads) bwd_grad_gate_finish_kernel(const BwdParams p, const acc* partial,
                                                                        int64_t chunks) {
  const Geometry& g = p.g;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= g.batch * g.frames * g.dim) return;
  const int64_t col = j % g.dim, frame = j / g.dim;
  acc total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[(frame * chunks + c) * g.dim + col];
  static_cast<G*>(p.grad_gate)[j] = static_cast<G>(total);
}

unsigned elementwise_blocks(const Geometry& g) {
  const int64_t n = g.batch * g.tokens * g.dim;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(blocks, 65536));  // the grid-stride loop covers the rest
}

at::Tensor gate_residual_fwd_cuda(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                                  int64_t tokens_per_frame) {
  const c10::cuda::CUDAGuard guard(x.device());
  FwdCall c = prepare_fwd(x, gate, y, tokens_per_frame);
  if (c.out.numel() == 0) return c.out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  COSMOS_DISPATCH_FLOATING(c.x.scalar_type(), "gate_residual", [&] {
    COSMOS_DISPATCH_MOD(c.gate.scalar_type(), scalar_t, "gate_residual", [&] {
      fwd_kernel<scalar_t, mod_t, at::opmath_type<scalar_t>>
          <<<elementwise_blocks(c.params.g), kThreads, 0, stream>>>(c.params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return c.out;
}

std::tuple<at::Tensor, at::Tensor> gate_residual_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& gate,
                                                          const at::Tensor& y, int64_t tokens_per_frame) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  BwdCall c = prepare_bwd(grad_out, gate, y, tokens_per_frame);
  const Geometry& g = c.params.g;
  if (c.grad_y.numel() == 0) return {c.grad_y, c.grad_gate.zero_()};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t frame_rows = g.batch * g.frames;
  const int64_t chunks = (g.tokens_per_frame + kReduceTokensPerChunk - 1) / kReduceTokensPerChunk;
  TORCH_CHECK(frame_rows <= 65535, "gate_residual: ", g.batch, " x ", g.frames,
              " gate rows exceed what one backward launch covers (65535); split the batch");
  TORCH_CHECK(chunks <= 65535, "gate_residual: ", g.tokens_per_frame, " tokens per frame exceed what one backward "
              "launch covers (", 65535 * kReduceTokensPerChunk, ")");
  const dim3 reduce_grid((g.dim + kReduceCols - 1) / kReduceCols, chunks, frame_rows);
  const dim3 reduce_block(kReduceCols, kReduceRowGroups);
  const auto finish_blocks = static_cast<unsigned>((frame_rows * g.dim + kThreads - 1) / kThreads);
  COSMOS_DISPATCH_FLOATING(c.grad_out.scalar_type(), "gate_residual", [&] {
    COSMOS_DISPATCH_MOD(c.gate.scalar_type(), scalar_t, "gate_residual", [&] {
      using acc = at::opmath_type<scalar_t>;
      bwd_grad_y_kernel<scalar_t, mod_t, acc><<<elementwise_blocks(g), kThreads, 0, stream>>>(c.params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const at::Tensor partial =
          at::empty({frame_rows, chunks, g.dim}, c.grad_out.options().dtype(c10::CppTypeToScalarType<acc>::value));
      acc* partial_ptr = partial.mutable_data_ptr<acc>();
      bwd_grad_gate_partial_kernel<scalar_t, mod_t, acc><<<reduce_grid, reduce_block, 0, stream>>>(c.params, partial_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      bwd_grad_gate_finish_kernel<mod_t, acc><<<finish_blocks, kThreads, 0, stream>>>(c.params, partial_ptr, chunks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {c.grad_y, c.grad_gate};
}

}  // namespace
}  // namespace cosmos_engine::gate_residual

TORCH_LIBRARY_IMPL(cosmos_engine, CUDA, m) {
  m.impl("gate_residual_fwd", &cosmos_engine::gate_residual::gate_residual_fwd_cuda);
  m.impl("gate_residual_bwd", &cosmos_engine::gate_residual::gate_residual_bwd_cuda);
}
