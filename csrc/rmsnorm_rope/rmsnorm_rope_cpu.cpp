// CPU entry points of rmsnorm_rope: argument checks, then the kernels of the best instruction set this
// CPU has (AVX2+FMA when present on x86-64, else the baseline build).
#include "rmsnorm_rope/rmsnorm_rope_cpu_isa.h"
#include "rmsnorm_rope/rmsnorm_rope_entry.h"

#include <torch/library.h>

#include <tuple>

namespace cosmos_engine::rmsnorm_rope {
namespace {

template <typename Params>
void run_kernels(const Params& p, const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.is_cpu(), "rmsnorm_rope: the CPU kernel got 'x' on ", x.device());
  const CpuDtype dtype = cpu_dtype(x.scalar_type(), "rmsnorm_rope");
  const bool fp32_weight = weight.scalar_type() != x.scalar_type();  // prepare_* allowed only float32 then
#if defined(COSMOS_ENGINE_CPU_AVX2)
  if (cpu_has_avx2()) return avx2::run(p, dtype, fp32_weight);
#endif
  baseline::run(p, dtype, fp32_weight);
}

std::tuple<at::Tensor, at::Tensor> rmsnorm_rope_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& cos,
                                                        const std::optional<at::Tensor>& sin, double eps) {
  FwdCall c = prepare_fwd(x, weight, cos, sin, eps);
  run_kernels(c.params, c.x, c.weight);
  return {c.out, c.rstd};
}

std::tuple<at::Tensor, at::Tensor> rmsnorm_rope_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                        const at::Tensor& weight, const std::optional<at::Tensor>& cos,
                                                        const std::optional<at::Tensor>& sin, const at::Tensor& rstd) {
  BwdCall c = prepare_bwd(grad_out, x, weight, cos, sin, rstd);
  run_kernels(c.params, c.x, c.weight);
  return {c.grad_x, c.grad_weight};
}

}  // namespace
}  // namespace cosmos_engine::rmsnorm_rope

TORCH_LIBRARY_IMPL(cosmos_engine, CPU, m) {
  m.impl("rmsnorm_rope_fwd", &cosmos_engine::rmsnorm_rope::rmsnorm_rope_fwd_cpu);
  m.impl("rmsnorm_rope_bwd", &cosmos_engine::rmsnorm_rope::rmsnorm_rope_bwd_cpu);
}
