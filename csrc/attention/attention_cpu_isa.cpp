// Instantiates the CPU kernels for one instruction set, named by COSMOS_CPU_ISA (set by CMake).
#include "attention/attention_cpu_isa.h"
#include "attention/attention_cpu_kernels.h"

namespace cosmos_engine::attention::COSMOS_CPU_ISA {

COSMOS_DEFINE_CPU_ISA_RUN

}  // namespace cosmos_engine::attention::COSMOS_CPU_ISA
