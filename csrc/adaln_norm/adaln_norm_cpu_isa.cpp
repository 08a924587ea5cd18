// Instantiates the CPU kernels for one instruction set, named by COSMOS_CPU_ISA (set by CMake).
#include "adaln_norm/adaln_norm_cpu_isa.h"
#include "adaln_norm/adaln_norm_cpu_kernels.h"

namespace cosmos_engine::adaln::COSMOS_CPU_ISA {

COSMOS_DEFINE_CPU_ISA_RUN

}  // namespace cosmos_engine::adaln::COSMOS_CPU_ISA
