// CPU entry points of attention: argument checks, then the kernels of the best instruction set this CPU
// has (AVX-512F, else AVX2+FMA when present on x86-64, else the baseline build). The CUDA implementation of the same
// ops is registered from Python (python/cosmos_engine/ops/attention.py: flash-attn-4 or SDPA).
#include "attention/attention_cpu_isa.h"
#include "attention/attention_entry.h"

#include <torch/library.h>

#include <tuple>

namespace cosmos_engine::attention {
namespace {

template <typename Params>
void run_kernels(const Params& p, const at::Tensor& q) {
  TORCH_CHECK(q.is_cpu(), "attention: the CPU kernel got 'q' on ", q.device());
  const CpuDtype dtype = cpu_dtype(q.scalar_type(), "attention");
  // No companion tensor: the kernels are instantiated with it equal to the activation type.
#if defined(COSMOS_ENGINE_CPU_AVX512)
  if (cpu_has_avx512()) return avx512::run(p, dtype, false);
#endif
#if defined(COSMOS_ENGINE_CPU_AVX2)
  if (cpu_has_avx2()) return avx2::run(p, dtype, false);
#endif
  baseline::run(p, dtype, false);
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  FwdCall c = prepare_fwd(q, k, v);
  run_kernels(c.params, c.q);
  return {c.out, c.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& q,
                                                                 const at::Tensor& k, const at::Tensor& v,
                                                                 const at::Tensor& out, const at::Tensor& lse) {
  BwdCall c = prepare_bwd(grad_out, q, k, v, out, lse);
  run_kernels(c.params, c.q);
  return {c.dq, c.dk, c.dv};
}

}  // namespace
}  // namespace cosmos_engine::attention

TORCH_LIBRARY_IMPL(cosmos_engine, CPU, m) {
  m.impl("attention_fwd", &cosmos_engine::attention::attention_fwd_cpu);
  m.impl("attention_bwd", &cosmos_engine::attention::attention_bwd_cpu);
}
