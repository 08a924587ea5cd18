// The per-instruction-set entry points of the CPU kernels (see rmsnorm_rope_cpu_kernels.h).
#pragma once

#include "common/cpu_isa.h"
#include "rmsnorm_rope/rmsnorm_rope_params.h"

namespace cosmos_engine::rmsnorm_rope {

COSMOS_DECLARE_CPU_ISA_RUN(baseline)
#if defined(COSMOS_ENGINE_CPU_AVX2)
COSMOS_DECLARE_CPU_ISA_RUN(avx2)
#endif

}  // namespace cosmos_engine::rmsnorm_rope
