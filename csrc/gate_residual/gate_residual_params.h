// Plain description of one gate_residual call: pointers and sizes. No torch and no CUDA headers, so
// the CPU and CUDA launchers share it. Every tensor is contiguous (the entry copies where needed).
#pragma once

#include <cstdint>

namespace cosmos_engine::gate_residual {

struct Geometry {
  int64_t batch = 0;             // B
  int64_t tokens = 0;            // L = frames * tokens_per_frame
  int64_t frames = 0;            // T (rows of the gate per sample)
  int64_t tokens_per_frame = 0;  // L / T
  int64_t dim = 0;               // D
};

struct FwdParams {
  Geometry g;
  const void* x = nullptr;     // [B, L, D]
  const void* gate = nullptr;  // [B, T, D], x's dtype or float32
  const void* y = nullptr;     // [B, L, D], x's dtype
  void* out = nullptr;         // [B, L, D], x's dtype
};

struct BwdParams {
  Geometry g;
  const void* grad_out = nullptr;  // [B, L, D]
  const void* gate = nullptr;      // [B, T, D]
  const void* y = nullptr;         // [B, L, D]
  void* grad_y = nullptr;          // [B, L, D], y's dtype
  void* grad_gate = nullptr;       // [B, T, D], the gate's dtype
};

}  // namespace cosmos_engine::gate_residual
