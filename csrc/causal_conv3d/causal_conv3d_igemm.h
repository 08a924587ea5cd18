// EXPERIMENT (design b): implicit-GEMM causal conv3d, AVX2/FMA, fp32, reading x and the cache in place.
#pragma once

#include "causal_conv3d/causal_conv3d_params.h"

#include <cstdint>

namespace cosmos_engine::causal_conv3d {

struct IgemmParams {
  GatherParams src;  // x / cache pointers and strides (channels-last: c stride 1), geometry
  int64_t cout = 0, kt = 1, kh = 1, kw = 1, st = 1, sh = 1, sw = 1;
  int64_t out_t = 0, out_h = 0, out_w = 0;
  const float* packed_w = nullptr;  // [ceil(cout/16)][kt*kh*kw][cin][16]
  const float* bias = nullptr;      // [cout] or null
  const float* zeros = nullptr;     // [cin] zeros
  float* out = nullptr;             // [B, out_t, out_h, out_w, cout]
};

namespace avx2 {
void igemm(const IgemmParams& p);
}

}  // namespace cosmos_engine::causal_conv3d
