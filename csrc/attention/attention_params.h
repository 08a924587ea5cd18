// Plain description of one attention call: pointers, sizes and element strides. No torch and no CUDA
// headers. q, k, v, grad_out and out are read in place through their strides ([B, L, H, D] with any
// batch/token/head strides, unit stride along D); the outputs the op allocates are contiguous.
#pragma once

#include <cstdint>

namespace cosmos_engine::attention {

struct Geometry {
  int64_t batch = 0;   // B
  int64_t q_len = 0;   // Lq
  int64_t kv_len = 0;  // Lk (= Lq for self-attention, 512 text tokens for cross-attention)
  int64_t heads = 0;   // H
  int64_t dim = 0;     // D, the head dimension (a multiple of 8, at most 256)
};

// Element strides of a [B, L, H, D] tensor (the D stride is 1).
struct Strides {
  int64_t batch = 0, token = 0, head = 0;
};

struct FwdParams {
  Geometry g;
  const void* q = nullptr;  // [B, Lq, H, D]
  const void* k = nullptr;  // [B, Lk, H, D]
  const void* v = nullptr;  // [B, Lk, H, D]
  Strides sq, sk, sv;
  void* out = nullptr;  // [B, Lq, H, D] contiguous, q's dtype
  void* lse = nullptr;  // [B, H, Lq] contiguous, the accumulation type: log sum_j exp(scale * q.k_j)
  double scale = 1.0;   // D^-1/2
};

struct BwdParams {
  Geometry g;
  const void* grad_out = nullptr;  // [B, Lq, H, D]
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;  // the forward's output
  const void* lse = nullptr;  // the forward's lse, contiguous [B, H, Lq]
  Strides sdo, sq, sk, sv, so;
  void* dq = nullptr;  // [B, Lq, H, D] contiguous, q's dtype
  void* dk = nullptr;  // [B, Lk, H, D]
  void* dv = nullptr;
  double scale = 1.0;
};

}  // namespace cosmos_engine::attention
