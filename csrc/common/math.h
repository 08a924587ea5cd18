// Small numeric helpers shared by the kernels' per-element math (COSMOS_HD: CPU and CUDA alike).
#pragma once

#include "common/host_device.h"

#include <cmath>

namespace cosmos_engine {

// 1 / sqrt(v): the hardware rsqrt on the GPU, the correctly rounded division on the CPU.
template <typename acc>
COSMOS_HD acc reciprocal_sqrt(acc v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(acc) == 4) return rsqrtf(v);
  else return rsqrt(v);
#else
  return acc(1) / std::sqrt(v);
#endif
}

}  // namespace cosmos_engine
