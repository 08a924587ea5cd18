// The per-instruction-set entry points of the CPU kernels (see attention_cpu_kernels.h).
#pragma once

#include "attention/attention_params.h"
#include "common/cpu_isa.h"

namespace cosmos_engine::attention {

COSMOS_DECLARE_CPU_ISA_RUN(baseline)
#if defined(COSMOS_ENGINE_CPU_AVX2)
COSMOS_DECLARE_CPU_ISA_RUN(avx2)
#endif
#if defined(COSMOS_ENGINE_CPU_AVX512)
COSMOS_DECLARE_CPU_ISA_RUN(avx512)
#endif

}  // namespace cosmos_engine::attention
