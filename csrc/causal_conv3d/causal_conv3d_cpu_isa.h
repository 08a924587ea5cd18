// The per-instruction-set entry points of the CPU kernels (see causal_conv3d_cpu_kernels.h).
#pragma once

#include "causal_conv3d/causal_conv3d_params.h"
#include "common/cpu_isa.h"

namespace cosmos_engine::causal_conv3d {

// gather(p, x): writes P from x and the cache of dtype `x`, in its accumulation dtype (fp32, fp64 for fp64).
namespace baseline {
void gather(const GatherParams& p, CpuDtype x);
}
#if defined(COSMOS_ENGINE_CPU_AVX2)
namespace avx2 {
void gather(const GatherParams& p, CpuDtype x);
}
#endif

}  // namespace cosmos_engine::causal_conv3d
