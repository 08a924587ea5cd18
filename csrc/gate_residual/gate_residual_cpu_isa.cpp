// Instantiates the CPU kernels for one instruction set, named by COSMOS_CPU_ISA (set by CMake).
#include "gate_residual/gate_residual_cpu_isa.h"
#include "gate_residual/gate_residual_cpu_kernels.h"

namespace cosmos_engine::gate_residual::COSMOS_CPU_ISA {

COSMOS_DEFINE_CPU_ISA_RUN

}  // namespace cosmos_engine::gate_residual::COSMOS_CPU_ISA
