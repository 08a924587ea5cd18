// Instantiates the CPU kernels for one instruction set, named by COSMOS_CPU_ISA (set by CMake).
#include "causal_conv3d/causal_conv3d_cpu_isa.h"
#include "causal_conv3d/causal_conv3d_cpu_kernels.h"

namespace cosmos_engine::causal_conv3d::COSMOS_CPU_ISA {

void gather(const GatherParams& p, CpuDtype x) {
  dispatch_cpu_dtype(x, false, [&](auto t, auto) { gather_cpu<typename decltype(t)::type>(p); });
}

}  // namespace cosmos_engine::causal_conv3d::COSMOS_CPU_ISA
