// CUDA entry point of causal_conv3d: the fused gather of the padded channels-last input in x's dtype, then
// ATen's convolution on it, which runs cuDNN's channels-last (NDHWC) kernel; bf16/fp16 accumulate in fp32
// inside cuDNN. The gather is one thread per padded element in a grid-stride loop: writes are coalesced,
// and so are reads from channels-last inputs (the layout the VAE keeps end to end).
#include "causal_conv3d/causal_conv3d_entry.h"
#include "causal_conv3d/causal_conv3d_math.h"
#include "common/dispatch.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

namespace cosmos_engine::causal_conv3d {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) gather_kernel(const GatherParams p) {
  const Geometry& g = p.g;
  const int64_t C = g.channels, Tp = padded_frames(g), Hp = padded_height(g), Wp = padded_width(g);
  const int64_t n = g.batch * Tp * Hp * Wp * C;
  T* padded = static_cast<T*>(p.padded);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t c = i % C, wp = (i / C) % Wp, r = i / (C * Wp);
    const int64_t b = r / (Tp * Hp), tp = (r / Hp) % Tp, hp = r % Hp;
    const RowSource s = row_source(p, b, tp, hp);
    const int64_t w = wp - g.pad_w;
    T value = T(0);
    if (!s.zero && w >= 0 && w < g.width) {
      const Strides5& st = s.from_cache ? p.cs : p.xs;
      value = static_cast<const T*>(s.from_cache ? p.cache : p.x)[s.base + w * st.w + c * st.c];
    }
    padded[i] = value;
  }
}

at::Tensor causal_conv3d_fwd_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& cache_x, at::IntArrayRef padding,
                                  at::IntArrayRef stride) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::ScalarType compute = x.scalar_type();  // cuDNN takes bf16/fp16 in and accumulates in fp32
  const Call c = prepare(x, weight, bias, cache_x, padding, stride, compute);
  const Geometry& g = c.params.g;
  const int64_t n = g.batch * padded_frames(g) * padded_height(g) * padded_width(g) * g.channels;
  if (c.gather && n > 0) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536));
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    COSMOS_DISPATCH_FLOATING(x.scalar_type(), "causal_conv3d", [&] {
      gather_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(c.params);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return convolve(c, weight, bias, compute);
}

}  // namespace
}  // namespace cosmos_engine::causal_conv3d

TORCH_LIBRARY_IMPL(cosmos_engine, CUDA, m) {
  m.impl("causal_conv3d_fwd", &cosmos_engine::causal_conv3d::causal_conv3d_fwd_cuda);
}
