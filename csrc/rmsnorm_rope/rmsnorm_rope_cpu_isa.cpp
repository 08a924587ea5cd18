// Instantiates the CPU kernels for one instruction set, named by COSMOS_CPU_ISA (set by CMake).
#include "rmsnorm_rope/rmsnorm_rope_cpu_isa.h"
#include "rmsnorm_rope/rmsnorm_rope_cpu_kernels.h"

namespace cosmos_engine::rmsnorm_rope::COSMOS_CPU_ISA {

COSMOS_DEFINE_CPU_ISA_RUN

}  // namespace cosmos_engine::rmsnorm_rope::COSMOS_CPU_ISA
