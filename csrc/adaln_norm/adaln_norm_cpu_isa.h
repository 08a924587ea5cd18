// The per-instruction-set entry points of the CPU kernels (see adaln_norm_cpu_kernels.h).
#pragma once

#include "common/cpu_isa.h"
#include "adaln_norm/adaln_norm_params.h"

namespace cosmos_engine::adaln {

COSMOS_DECLARE_CPU_ISA_RUN(baseline)
#if defined(COSMOS_ENGINE_CPU_AVX2)
COSMOS_DECLARE_CPU_ISA_RUN(avx2)
#endif

}  // namespace cosmos_engine::adaln
