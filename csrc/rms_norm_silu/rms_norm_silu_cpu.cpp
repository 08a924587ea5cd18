// CPU entry point of rms_norm_silu: argument checks, then the kernels of the best instruction set this
// CPU has (AVX2+FMA when present on x86-64, else the baseline build).
#include "rms_norm_silu/rms_norm_silu_cpu_isa.h"
#include "rms_norm_silu/rms_norm_silu_entry.h"

#include <torch/library.h>

namespace cosmos_engine::rms_norm_silu {
namespace {

at::Tensor rms_norm_silu_fwd_cpu(const at::Tensor& x, const at::Tensor& gamma, bool silu) {
  TORCH_CHECK(x.is_cpu(), "rms_norm_silu: the CPU kernel got 'x' on ", x.device());
  FwdCall c = prepare_fwd(x, gamma, silu);
  if (c.params.rows == 0) return c.out;
  const CpuDtype dtype = cpu_dtype(x.scalar_type(), "rms_norm_silu");
  const bool fp32_gamma = c.gamma.scalar_type() != x.scalar_type();  // prepare_fwd allowed only float32 then
#if defined(COSMOS_ENGINE_CPU_AVX2)
  if (cpu_has_avx2()) {
    avx2::run(c.params, dtype, fp32_gamma);
    return c.out;
  }
#endif
  baseline::run(c.params, dtype, fp32_gamma);
  return c.out;
}

}  // namespace
}  // namespace cosmos_engine::rms_norm_silu

TORCH_LIBRARY_IMPL(cosmos_engine, CPU, m) {
  m.impl("rms_norm_silu_fwd", &cosmos_engine::rms_norm_silu::rms_norm_silu_fwd_cpu);
}
