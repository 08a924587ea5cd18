// Instantiates the CPU kernels for one instruction set, named by COSMOS_CPU_ISA (set by CMake).
#include "gate_residual/gate_residual_cpu_isa.h"
#include "gate_residual/gate_residual_cpu_kernels.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace cosmos_engine::gate_residual::COSMOS_CPU_ISA {

template <typename T>
void run_typed(const FwdParams& p, bool fp32_gate) {
  if (fp32_gate) fwd_cpu<T, float>(p);
  else fwd_cpu<T, T>(p);
}

template <typename T>
void run_typed(const BwdParams& p, bool fp32_gate) {
  if (fp32_gate) bwd_cpu<T, float>(p);
  else bwd_cpu<T, T>(p);
}

template <typename Params>
void dispatch(const Params& p, CpuDtype x, bool fp32_gate) {
  switch (x) {
    case CpuDtype::kFloat: return run_typed<float>(p, fp32_gate);
    case CpuDtype::kDouble: return run_typed<double>(p, fp32_gate);
    case CpuDtype::kBFloat16: return run_typed<c10::BFloat16>(p, fp32_gate);
    case CpuDtype::kHalf: return run_typed<c10::Half>(p, fp32_gate);
  }
}

void run(const FwdParams& p, CpuDtype x, bool fp32_gate) { dispatch(p, x, fp32_gate); }
void run(const BwdParams& p, CpuDtype x, bool fp32_gate) { dispatch(p, x, fp32_gate); }

}  // namespace cosmos_engine::gate_residual::COSMOS_CPU_ISA
