// Plain description of one adaln_layernorm call: pointers, sizes and strides (in elements). No torch
// and no CUDA headers, so the CPU and CUDA launchers share it.
#pragma once

#include <cstdint>

namespace cosmos_engine::adaln {

struct Geometry {
  int64_t batch = 0;             // B
  int64_t tokens = 0;            // L = frames * tokens_per_frame
  int64_t frames = 0;            // T (rows of shift/scale per sample)
  int64_t tokens_per_frame = 0;  // L / T
  int64_t dim = 0;               // D
  // x, out, grad_out and grad_x are [B, L, D] with a unit last stride.
  int64_t x_batch_stride = 0, x_token_stride = 0;
  // shift, scale, grad_shift and grad_scale are [B, T, D] with a unit last stride.
  int64_t mod_batch_stride = 0, mod_frame_stride = 0;
};

struct FwdParams {
  Geometry g;
  const void* x = nullptr;
  const void* shift = nullptr;
  const void* scale = nullptr;
  void* out = nullptr;    // contiguous [B, L, D], x's dtype
  void* mean = nullptr;  // contiguous [B, L], accumulation type (fp32; fp64 for fp64 inputs)
  void* rstd = nullptr;
  double eps = 1e-6;
};

struct BwdParams {
  Geometry g;
  const void* grad_out = nullptr;  // [B, L, D], unit last stride, its own strides below
  int64_t grad_out_batch_stride = 0, grad_out_token_stride = 0;
  const void* x = nullptr;
  const void* scale = nullptr;
  const void* mean = nullptr;  // as written by the forward
  const void* rstd = nullptr;
  void* grad_x = nullptr;      // contiguous [B, L, D]
  void* grad_shift = nullptr;  // contiguous [B, T, D], dtype of shift/scale
  void* grad_scale = nullptr;
};

}  // namespace cosmos_engine::adaln
