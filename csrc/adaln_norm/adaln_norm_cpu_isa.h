// The per-instruction-set entry points of the CPU kernels (see adaln_norm_cpu_kernels.h).
#pragma once

#include "adaln_norm/adaln_norm_params.h"
#include "common/cpu_isa.h"

namespace cosmos_engine::adaln {

// fp32_modulation: shift/scale are float32 while x is another dtype (else they have x's dtype).
#define COSMOS_DECLARE_CPU_ISA(ISA)                                          \
  namespace ISA {                                                            \
  void run(const FwdParams& p, CpuDtype x, bool fp32_modulation);            \
  void run(const BwdParams& p, CpuDtype x, bool fp32_modulation);            \
  }

COSMOS_DECLARE_CPU_ISA(baseline)
#if defined(COSMOS_ENGINE_CPU_AVX2)
COSMOS_DECLARE_CPU_ISA(avx2)
#endif
#undef COSMOS_DECLARE_CPU_ISA

}  // namespace cosmos_engine::adaln
