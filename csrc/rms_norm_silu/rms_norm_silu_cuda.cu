// CUDA kernel of rms_norm_silu (compiled for sm_90a; nothing here is Hopper-specific).
//
// One warp per row (pixel): the lanes stride over the C channels (coalesced, the channels are innermost),
// reduce the sum of squares with a butterfly (fixed order: deterministic), then read the row again (from
// L1: a row is at most a few KiB) to write the output. 8 warps per block, rows in a grid-stride loop.
#include "common/dispatch.h"
#include "common/warp.cuh"
#include "rms_norm_silu/rms_norm_silu_entry.h"
#include "rms_norm_silu/rms_norm_silu_math.h"

#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

namespace cosmos_engine::rms_norm_silu {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float device_exp(float v) { return expf(v); }
__device__ __forceinline__ double device_exp(double v) { return exp(v); }

template <typename T, typename G, typename acc>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarpSize) fwd_kernel(const FwdParams p) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t C = p.channels;
  const T* xs = static_cast<const T*>(p.x);
  const G* gamma = static_cast<const G*>(p.gamma);
  T* outs = static_cast<T*>(p.out);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; r < p.rows;
       r += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const T* x = xs + r * C;
    T* out = outs + r * C;
    acc sum_squares = 0;
    for (int64_t c = lane; c < C; c += kWarpSize) {
      const acc v = static_cast<acc>(x[c]);
      sum_squares += v * v;
    }
    const acc scale = row_scale(warp_sum(sum_squares), C);
    for (int64_t c = lane; c < C; c += kWarpSize) {
      acc v = normalized(static_cast<acc>(x[c]), scale, static_cast<acc>(gamma[c]));
      if (p.silu) v = silu_from_exp(v, device_exp(-v));
      out[c] = static_cast<T>(v);
    }
  }
}

at::Tensor rms_norm_silu_fwd_cuda(const at::Tensor& x, const at::Tensor& gamma, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  FwdCall c = prepare_fwd(x, gamma, silu);
  if (c.params.rows == 0) return c.out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks = std::min<int64_t>((c.params.rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 65536);
  COSMOS_DISPATCH_FLOATING(c.x_rows.scalar_type(), "rms_norm_silu", [&] {
    using acc = at::opmath_type<scalar_t>;
    if (c.gamma.scalar_type() == c.x_rows.scalar_type()) {
      fwd_kernel<scalar_t, scalar_t, acc><<<blocks, kWarpsPerBlock * kWarpSize, 0, stream>>>(c.params);
    } else {
      fwd_kernel<scalar_t, float, acc><<<blocks, kWarpsPerBlock * kWarpSize, 0, stream>>>(c.params);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return c.out;
}

}  // namespace
}  // namespace cosmos_engine::rms_norm_silu

TORCH_LIBRARY_IMPL(cosmos_engine, CUDA, m) {
  m.impl("rms_norm_silu_fwd", &cosmos_engine::rms_norm_silu::rms_norm_silu_fwd_cuda);
}
