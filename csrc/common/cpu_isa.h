// What the CPU kernels are built for and which build runs: each op's kernels are compiled once per
// instruction set (a baseline x86-64 object and, on x86-64, an AVX2+FMA one, in namespaces named by
// COSMOS_CPU_ISA), and the op's CPU entry picks one at run time with `cpu_has_avx2()`.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

namespace cosmos_engine {

// The activation dtypes of the CPU kernels, without torch types in the per-ISA interfaces.
enum class CpuDtype { kFloat, kDouble, kBFloat16, kHalf };

inline CpuDtype cpu_dtype(c10::ScalarType t, const char* op) {
  switch (t) {
    case c10::kFloat: return CpuDtype::kFloat;
    case c10::kDouble: return CpuDtype::kDouble;
    case c10::kBFloat16: return CpuDtype::kBFloat16;
    case c10::kHalf: return CpuDtype::kHalf;
    default: TORCH_CHECK(false, op, ": argument 'x' must be float32, bfloat16, float16 or float64, got ", t);
  }
}

// True when the AVX2 build exists and this CPU can run it.
inline bool cpu_has_avx2() {
#if defined(COSMOS_ENGINE_CPU_AVX2)
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

}  // namespace cosmos_engine
