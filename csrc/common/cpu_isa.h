// What the CPU kernels are built for and which build runs: each op's kernels are compiled once per
// instruction set (a baseline x86-64 object and, on x86-64, an AVX2+FMA one, plus an AVX-512F one for
// attention, in namespaces named by COSMOS_CPU_ISA), and the op's CPU entry picks one at run time with
// `cpu_has_avx2()` / `cpu_has_avx512()`.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

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

// True when the AVX-512 build (attention only) exists and this CPU can run it.
inline bool cpu_has_avx512() {
#if defined(COSMOS_ENGINE_CPU_AVX512)
  static const bool supported = __builtin_cpu_supports("avx512f") && cpu_has_avx2();
  return supported;
#else
  return false;
#endif
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}, TypeTag<S>{}) with T the activation type named by `x` and S its companion type
// (a weight, gate or modulation): float when `fp32_companion`, else T itself.
template <typename F>
void dispatch_cpu_dtype(CpuDtype x, bool fp32_companion, F&& f) {
  auto with = [&](auto tag) {
    if (fp32_companion) f(tag, TypeTag<float>{});
    else f(tag, tag);
  };
  switch (x) {
    case CpuDtype::kFloat: return with(TypeTag<float>{});
    case CpuDtype::kDouble: return with(TypeTag<double>{});
    case CpuDtype::kBFloat16: return with(TypeTag<c10::BFloat16>{});
    case CpuDtype::kHalf: return with(TypeTag<c10::Half>{});
  }
}

}  // namespace cosmos_engine

// Declares, in the enclosing op namespace, the entry points of one instruction set's CPU kernels:
// run(FwdParams) and run(BwdParams), given the activation dtype and whether the companion is float32.
#define COSMOS_DECLARE_CPU_ISA_RUN(ISA)                                       \
  namespace ISA {                                                             \
  void run(const FwdParams& p, ::cosmos_engine::CpuDtype x, bool fp32_companion); \
  void run(const BwdParams& p, ::cosmos_engine::CpuDtype x, bool fp32_companion); \
  }

// Defines, inside an op's `namespace COSMOS_CPU_ISA`, both run() functions over that op's templates
// fwd_cpu<T, S>(FwdParams) and bwd_cpu<T, S>(BwdParams).
#define COSMOS_DEFINE_CPU_ISA_RUN                                                                      \
  void run(const FwdParams& p, ::cosmos_engine::CpuDtype x, bool fp32_companion) {                     \
    ::cosmos_engine::dispatch_cpu_dtype(x, fp32_companion, [&](auto t, auto s) {                       \
      fwd_cpu<typename decltype(t)::type, typename decltype(s)::type>(p);                              \
    });                                                                                                \
  }                                                                                                    \
  void run(const BwdParams& p, ::cosmos_engine::CpuDtype x, bool fp32_companion) {                     \
    ::cosmos_engine::dispatch_cpu_dtype(x, fp32_companion, [&](auto t, auto s) {                       \
      bwd_cpu<typename decltype(t)::type, typename decltype(s)::type>(p);                              \
    });                                                                                                \
  }
