// CPU entry points of gate_residual: argument checks, then the kernels of the best instruction set this
// CPU has (AVX2+FMA when present on x86-64, else the baseline build).
#include "gate_residual/gate_residual_cpu_isa.h"
#include "gate_residual/gate_residual_entry.h"

#include <torch/library.h>

#include <tuple>

namespace cosmos_engine::gate_residual {
namespace {

template <typename Params>
void run_kernels(const Params& p, const at::Tensor& act, const at::Tensor& gate) {
  TORCH_CHECK(act.is_cpu(), "gate_residual: the CPU kernel got its inputs on ", act.device());
  const CpuDtype dtype = cpu_dtype(act.scalar_type(), "gate_residual");
  const bool fp32_gate = gate.scalar_type() != act.scalar_type();  // prepare_* allowed only float32 then
#if defined(COSMOS_ENGINE_CPU_AVX2)
  if (cpu_has_avx2()) return avx2::run(p, dtype, fp32_gate);
#endif
  baseline::run(p, dtype, fp32_gate);
}

at::Tensor gate_residual_fwd_cpu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                                 int64_t tokens_per_frame) {
  FwdCall c = prepare_fwd(x, gate, y, tokens_per_frame);
  run_kernels(c.params, c.x, c.gate);
  return c.out;
}

std::tuple<at::Tensor, at::Tensor> gate_residual_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& gate,
                                                         const at::Tensor& y, int64_t tokens_per_frame) {
  BwdCall c = prepare_bwd(grad_out, gate, y, tokens_per_frame);
  run_kernels(c.params, c.grad_out, c.gate);
  return {c.grad_y, c.grad_gate};
}

}  // namespace
}  // namespace cosmos_engine::gate_residual

TORCH_LIBRARY_IMPL(cosmos_engine, CPU, m) {
  m.impl("gate_residual_fwd", &cosmos_engine::gate_residual::gate_residual_fwd_cpu);
  m.impl("gate_residual_bwd", &cosmos_engine::gate_residual::gate_residual_bwd_cpu);
}
