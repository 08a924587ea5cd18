// The per-instruction-set entry points of the CPU kernels (see gate_residual_cpu_kernels.h).
#pragma once

#include "common/cpu_isa.h"
#include "gate_residual/gate_residual_params.h"

namespace cosmos_engine::gate_residual {

COSMOS_DECLARE_CPU_ISA_RUN(baseline)
#if defined(COSMOS_ENGINE_CPU_AVX2)
COSMOS_DECLARE_CPU_ISA_RUN(avx2)
#endif

}  // namespace cosmos_engine::gate_residual
