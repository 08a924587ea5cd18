// The per-instruction-set entry points of the CPU kernels (see gate_residual_cpu_kernels.h).
#pragma once

#include "common/cpu_isa.h"
#include "gate_residual/gate_residual_params.h"

namespace cosmos_engine::gate_residual {

// fp32_gate: the gate is float32 while x is another dtype (else it has x's dtype).
#define COSMOS_DECLARE_CPU_ISA(ISA)                                \
  namespace ISA {                                                  \
  void run(const FwdParams& p, CpuDtype x, bool fp32_gate);        \
  void run(const BwdParams& p, CpuDtype x, bool fp32_gate);        \
  }

COSMOS_DECLARE_CPU_ISA(baseline)
#if defined(COSMOS_ENGINE_CPU_AVX2)
COSMOS_DECLARE_CPU_ISA(avx2)
#endif
#undef COSMOS_DECLARE_CPU_ISA

}  // namespace cosmos_engine::gate_residual
