// Warp-level helpers of the CUDA kernels.
#pragma once

namespace cosmos_engine {

constexpr int kWarpSize = 32;

// The sum of v over the 32 lanes of the warp, in every lane (butterfly, fixed order: deterministic).
template <typename acc>
__device__ __forceinline__ acc warp_sum(acc v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace cosmos_engine
