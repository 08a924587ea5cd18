// The per-instruction-set entry points of the CPU kernels (see rms_norm_silu_cpu_kernels.h). Forward
// only: the VAE is frozen, so there is no backward op.
#pragma once

#include "common/cpu_isa.h"
#include "rms_norm_silu/rms_norm_silu_params.h"

namespace cosmos_engine::rms_norm_silu {

namespace baseline {
void run(const FwdParams& p, CpuDtype x, bool fp32_gamma);
}
#if defined(COSMOS_ENGINE_CPU_AVX2)
namespace avx2 {
void run(const FwdParams& p, CpuDtype x, bool fp32_gamma);
}
#endif

}  // namespace cosmos_engine::rms_norm_silu
