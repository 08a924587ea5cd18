// Plain description of one rmsnorm_rope call: pointers and sizes. No torch and no CUDA headers, so the
// CPU and CUDA launchers share it. Every tensor is contiguous (the entry copies where needed).
#pragma once

#include <cstdint>

namespace cosmos_engine::rmsnorm_rope {

struct Geometry {
  int64_t batch = 0;   // B
  int64_t tokens = 0;  // L
  int64_t heads = 0;   // H
  int64_t dim = 0;     // d, the head dimension (even)
  bool rope = false;   // rotate with cos/sin (self-attention) or normalize only (cross-attention keys)
};

struct FwdParams {
  Geometry g;
  const void* x = nullptr;       // [B, L, H, d]
  const void* weight = nullptr;  // [d], x's dtype or float32
  const void* cos = nullptr;     // [L, d], the accumulation type (fp32; fp64 for fp64), or null
  const void* sin = nullptr;
  void* out = nullptr;   // [B, L, H, d], x's dtype
  void* rstd = nullptr;  // [B, L, H], the accumulation type
  double eps = 1e-6;
};

struct BwdParams {
  Geometry g;
  const void* grad_out = nullptr;  // [B, L, H, d]
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* cos = nullptr;
  const void* sin = nullptr;
  const void* rstd = nullptr;  // as written by the forward
  void* grad_x = nullptr;      // [B, L, H, d], x's dtype
  void* grad_weight = nullptr;  // [d], the weight's dtype
};

}  // namespace cosmos_engine::rmsnorm_rope
