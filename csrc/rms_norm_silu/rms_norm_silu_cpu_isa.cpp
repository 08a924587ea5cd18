// Instantiates the CPU kernels for one instruction set, named by COSMOS_CPU_ISA (set by CMake).
#include "rms_norm_silu/rms_norm_silu_cpu_isa.h"
#include "rms_norm_silu/rms_norm_silu_cpu_kernels.h"

namespace cosmos_engine::rms_norm_silu::COSMOS_CPU_ISA {

void run(const FwdParams& p, CpuDtype x, bool fp32_gamma) {
  dispatch_cpu_dtype(x, fp32_gamma, [&](auto t, auto g) {
    fwd_cpu<typename decltype(t)::type, typename decltype(g)::type>(p);
  });
}

}  // namespace cosmos_engine::rms_norm_silu::COSMOS_CPU_ISA
