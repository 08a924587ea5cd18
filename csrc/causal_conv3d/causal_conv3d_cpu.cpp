// CPU entry point of causal_conv3d: checks, the fused gather of the padded channels-last input (kernels of
// the best instruction set this CPU has), then ATen's convolution on it, which runs oneDNN's
// channels-last fp32 kernel (see python/cosmos_engine/ops/causal_conv3d.py for why this design).
#include "causal_conv3d/causal_conv3d_cpu_isa.h"
#include "causal_conv3d/causal_conv3d_entry.h"

#include <ATen/OpMathType.h>
#include <torch/library.h>

namespace cosmos_engine::causal_conv3d {
namespace {

at::Tensor causal_conv3d_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& cache_x, at::IntArrayRef padding,
                                 at::IntArrayRef stride) {
  TORCH_CHECK(x.is_cpu(), "causal_conv3d: the CPU kernel got 'x' on ", x.device());
  const at::ScalarType compute = at::toOpMathType(x.scalar_type());  // fp32 for bf16/fp16, as the reference
  const Call c = prepare(x, weight, bias, cache_x, padding, stride, compute);
  if (c.gather) {
    const CpuDtype dtype = cpu_dtype(x.scalar_type(), "causal_conv3d");
#if defined(COSMOS_ENGINE_CPU_AVX2)
    if (cpu_has_avx2()) {
      avx2::gather(c.params, dtype);
    } else {
      baseline::gather(c.params, dtype);
    }
#else
    baseline::gather(c.params, dtype);
#endif
  }
  return convolve(c, weight, bias, compute);
}

}  // namespace
}  // namespace cosmos_engine::causal_conv3d

TORCH_LIBRARY_IMPL(cosmos_engine, CPU, m) {
  m.impl("causal_conv3d_fwd", &cosmos_engine::causal_conv3d::causal_conv3d_fwd_cpu);
}

// EXPERIMENT (design b): the implicit-GEMM kernel, measured against the gather + oneDNN path.
#include "causal_conv3d/causal_conv3d_igemm.h"
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace cosmos_engine::causal_conv3d {
namespace {
at::Tensor causal_conv3d_igemm_cpu(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& cache_in, at::IntArrayRef padding, at::IntArrayRef stride) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && cpu_has_avx2(), "igemm experiment: fp32 + AVX2 only");
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast3d);
  std::optional<at::Tensor> cache;
  if (cache_in.has_value()) cache = cache_in->contiguous(at::MemoryFormat::ChannelsLast3d);
  Call c = prepare(x, weight, bias, cache, padding, stride, at::kFloat);
  IgemmParams p;
  p.src.g = c.params.g;
  p.src.x = x.const_data_ptr();
  p.src.xs = {x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.stride(4)};
  if (c.params.g.cache_frames > 0) {
    p.src.cache = cache->const_data_ptr();
    p.src.cs = {cache->stride(0), cache->stride(1), cache->stride(2), cache->stride(3), cache->stride(4)};
  }
  const int64_t cout = weight.size(0), cin = weight.size(1);
  p.cout = cout;
  p.kt = weight.size(2); p.kh = weight.size(3); p.kw = weight.size(4);
  p.st = stride[0]; p.sh = stride[1]; p.sw = stride[2];
  const Geometry& g = c.params.g;
  p.out_t = (g.past + g.frames - p.kt) / p.st + 1;
  p.out_h = (g.height + 2 * g.pad_h - p.kh) / p.sh + 1;
  p.out_w = (g.width + 2 * g.pad_w - p.kw) / p.sw + 1;
  const int64_t cb = (cout + 15) / 16, taps = p.kt * p.kh * p.kw;
  // [cb*16, cin, taps] -> [cb, taps, cin, 16]
  at::Tensor w = at::zeros({cb * 16, cin, taps}, weight.options());
  w.narrow(0, 0, cout).copy_(weight.reshape({cout, cin, taps}));
  at::Tensor packed = w.view({cb, 16, cin, taps}).permute({0, 3, 2, 1}).contiguous();
  at::Tensor zeros = at::zeros({cin}, weight.options());
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, cout, p.out_t, p.out_h, p.out_w},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  p.packed_w = packed.const_data_ptr<float>();
  p.bias = bias.has_value() ? b.const_data_ptr<float>() : nullptr;
  p.zeros = zeros.const_data_ptr<float>();
  p.out = out.mutable_data_ptr<float>();
  avx2::igemm(p);
  return out;
}
}  // namespace
}  // namespace cosmos_engine::causal_conv3d

TORCH_LIBRARY_FRAGMENT(cosmos_engine, m) {
  m.def("causal_conv3d_igemm_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? cache_x, int[3] padding, int[3] stride) -> Tensor");
}
TORCH_LIBRARY_IMPL(cosmos_engine, CPU, m) {
  m.impl("causal_conv3d_igemm_fwd", &cosmos_engine::causal_conv3d::causal_conv3d_igemm_cpu);
}
