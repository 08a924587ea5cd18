// CPU entry points of adaln_layernorm: argument checks, then the kernels of the best instruction set
// this CPU has (AVX2+FMA when present on x86-64, else the baseline build).
#include "adaln_norm/adaln_norm_cpu_isa.h"
#include "adaln_norm/adaln_norm_entry.h"

#include <torch/library.h>

namespace cosmos_engine::adaln {
namespace {

// prepare_* already checked that the modulation has x's dtype or float32.
bool fp32_modulation(const at::Tensor& x, const at::Tensor& scale) {
  return scale.scalar_type() != x.scalar_type();
}

// Runs the forward or backward kernels (by the params type) of the best instruction set of this CPU.
template <typename Params>
void run_kernels(const Params& p, const at::Tensor& x, const at::Tensor& scale) {
  TORCH_CHECK(x.is_cpu(), "adaln_layernorm: the CPU kernel got 'x' on ", x.device());
  const CpuDtype dtype = cpu_dtype(x.scalar_type(), "adaln_layernorm");
  const bool mod32 = fp32_modulation(x, scale);
#if defined(COSMOS_ENGINE_CPU_AVX2)
  if (cpu_has_avx2()) return avx2::run(p, dtype, mod32);
#endif
  baseline::run(p, dtype, mod32);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_layernorm_fwd_cpu(
    const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, int64_t tokens_per_frame,
    double eps) {
  FwdCall c = prepare_fwd(x, shift, scale, tokens_per_frame, eps);
  run_kernels(c.params, c.x, c.scale);
  return {c.out, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_layernorm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t tokens_per_frame) {
  BwdCall c = prepare_bwd(grad_out, x, scale, mean, rstd, tokens_per_frame);
  run_kernels(c.params, c.x, c.scale);
  return {c.grad_x, c.grad_shift, c.grad_scale};
}

}  // namespace
}  // namespace cosmos_engine::adaln

TORCH_LIBRARY_IMPL(cosmos_engine, CPU, m) {
  m.impl("adaln_layernorm_fwd", &cosmos_engine::adaln::adaln_layernorm_fwd_cpu);
  m.impl("adaln_layernorm_bwd", &cosmos_engine::adaln::adaln_layernorm_bwd_cpu);
}
