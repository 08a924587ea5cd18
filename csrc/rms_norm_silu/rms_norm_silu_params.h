// Plain description of one rms_norm_silu call: pointers and sizes. No torch and no CUDA headers, so the
// CPU and CUDA launchers share it. x and out are `rows` rows of `channels` contiguous values: a
// channels-last activation [B, C, (T,) H, W] is [B, (T,) H, W, C] in memory, one row per pixel.
#pragma once

#include <cstdint>

namespace cosmos_engine::rms_norm_silu {

struct FwdParams {
  int64_t rows = 0;             // B * (T *) H * W
  int64_t channels = 0;         // C
  bool silu = false;            // apply SiLU after the norm
  const void* x = nullptr;      // [rows, C], the activation dtype
  const void* gamma = nullptr;  // [C], x's dtype or float32
  void* out = nullptr;          // [rows, C], x's dtype
};

}  // namespace cosmos_engine::rms_norm_silu
