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

