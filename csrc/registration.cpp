// Every op schema of the cosmos_engine namespace, in one place. Implementations register themselves
// per device in csrc/<op>/<op>_{cpu.cpp,cuda.cu}; fakes and autograd live in python/cosmos_engine/ops.
#include "common/cpu_isa.h"

#include <torch/library.h>

#include <string>

namespace cosmos_engine {
namespace {

#if defined(COSMOS_ENGINE_WITH_CUDA)
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// The instruction set the CPU kernels use on this machine; attention's may be wider (avx512).
const char* cpu_isa() { return cpu_has_avx2() ? "avx2" : "baseline"; }
const char* attention_cpu_isa() { return cpu_has_avx512() ? "avx512" : cpu_isa(); }

// What this library was built with, as JSON (read by cosmos_engine.build_info()).
std::string build_info() {
  std::string json = "{";
  json += "\"torch_version\": \"" COSMOS_BUILD_TORCH_VERSION "\", ";
  json += "\"torch_cuda_version\": \"" COSMOS_BUILD_TORCH_CUDA_VERSION "\", ";
  json += std::string("\"cuda\": ") + (kWithCuda ? "true" : "false") + ", ";
  json += "\"cuda_reason\": \"" COSMOS_BUILD_CUDA_REASON "\", ";
  json += "\"cuda_archs\": \"" COSMOS_BUILD_CUDA_ARCHS "\", ";
  json += "\"cuda_cubins\": \"" COSMOS_BUILD_CUDA_CUBINS "\", ";
  json += "\"cuda_ptx\": \"" COSMOS_BUILD_CUDA_PTX "\", ";
  json += "\"cutlass_include\": \"" COSMOS_BUILD_CUTLASS_DIR "\", ";
  json += std::string("\"cpu_isa\": \"") + cpu_isa() + "\", ";
  json += std::string("\"attention_cpu_isa\": \"") + attention_cpu_isa() + "\"";
  json += "}";
  return json;
}

}  // namespace
}  // namespace cosmos_engine

TORCH_LIBRARY(cosmos_engine, m) {
  // JSON describing the build: torch version, CUDA on/off and why, archs (and the cubins and PTX in _C).
  m.def("build_info() -> str", &cosmos_engine::build_info);

  // LayerNorm without affine (eps) of each token of x [B, L, D], then per-frame modulation
  // out = xhat * (1 + scale[b, l / tokens_per_frame]) + shift[...], shift/scale [B, T, D],
  // L = T * tokens_per_frame. fp32 math inside (fp64 for fp64), out in x's dtype; mean and rstd
  // [B, L] in the accumulation dtype are saved for the backward.
  m.def(
      "adaln_layernorm_fwd(Tensor x, Tensor shift, Tensor scale, SymInt tokens_per_frame, "
      "float eps) -> (Tensor out, Tensor mean, Tensor rstd)");
  // Gradients of adaln_layernorm_fwd w.r.t. x, shift and scale, from the saved mean/rstd.
  m.def(
      "adaln_layernorm_bwd(Tensor grad_out, Tensor x, Tensor scale, Tensor mean, Tensor rstd, "
      "SymInt tokens_per_frame) -> (Tensor grad_x, Tensor grad_shift, Tensor grad_scale)");

  // The gated residual of every DiT sub-block: out = x + gate[b, l / tokens_per_frame] * y for x, y
  // [B, L, D] and a per-frame gate [B, T, D] (x's dtype or float32), fp32 math (fp64 for fp64), one
  // rounding to x's dtype.
  m.def("gate_residual_fwd(Tensor x, Tensor gate, Tensor y, SymInt tokens_per_frame) -> Tensor");
  // Gradients w.r.t. y (grad_out * gate, y's dtype) and gate (sum of grad_out * y over each frame's
  // tokens, the gate's dtype); the gradient w.r.t. x is grad_out itself.
  m.def(
      "gate_residual_bwd(Tensor grad_out, Tensor gate, Tensor y, SymInt tokens_per_frame) "
      "-> (Tensor grad_y, Tensor grad_gate)");

  // The attention's per-head q/k RMSNorm followed by the rotate-half 3D RoPE, one pass: each head
  // vector of x [B, L, H, d] is x * rstd * weight (rstd = 1/sqrt(mean(x^2) + eps), weight [d] in x's
  // dtype or float32), then rotated with cos/sin [L, d] (float32; float64 for float64 x) when given.
  // fp32 math, one rounding to x's dtype; rstd [B, L, H] is saved for the backward.
  m.def(
      "rmsnorm_rope_fwd(Tensor x, Tensor weight, Tensor? cos, Tensor? sin, float eps) "
      "-> (Tensor out, Tensor rstd)");
  // Gradients of rmsnorm_rope_fwd w.r.t. x and weight (the table is not differentiated).
  m.def(
      "rmsnorm_rope_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor? cos, Tensor? sin, Tensor rstd) "
      "-> (Tensor grad_x, Tensor grad_weight)");

  // The Wan2.1 VAE's channel RMS norm of x [B, C, ...] (channels in dim 1, innermost in memory for the
  // fast path; other layouts are converted once): x / max(||x||_2 over C, 1e-12) * sqrt(C) * gamma
  // (gamma [C] or [C, 1, ...], x's dtype or float32), then SiLU when `silu`. fp32 math (fp64 for fp64),
  // one rounding to x's dtype; out is channels-last. Forward only (the VAE is frozen).
  m.def("rms_norm_silu_fwd(Tensor x, Tensor gamma, bool silu) -> Tensor");

  // Non-causal softmax attention without mask: out = softmax(q k^T / sqrt(D)) v over q [B, Lq, H, D] and
  // k, v [B, Lk, H, D], read in place through their strides; fp32 math (fp64 for fp64), out in q's
  // dtype. lse [B, H, Lq] in the accumulation dtype is log sum_j exp(q.k_j / sqrt(D)), saved for the
  // backward. CPU: a flash-style tiled kernel; CUDA: flash-attn-4 or SDPA, registered from Python.
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v) -> (Tensor out, Tensor lse)");
  // Gradients of attention_fwd w.r.t. q, k and v from its saved out and lse (probabilities recomputed).
  m.def(
      "attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse) "
      "-> (Tensor dq, Tensor dk, Tensor dv)");

  // The Wan VAE's causal 3-D convolution of x [B, C_in, T, H, W] with weight [C_out, C_in, kT, kH, kW]:
  // padding = (past, height, width) puts `past` frames in front of x (cache_x [B, C_in, n <= past, H, W],
  // the previous chunk's last input frames, after past - n zero frames), none behind, and zero rows/columns
  // on both sides. x and cache_x are read in place (any strides), the padding is implicit; the output is
  // channels_last_3d in x's dtype, accumulated in fp32 (fp64 for fp64). Forward only (the VAE is frozen).
  m.def(
      "causal_conv3d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? cache_x, int[3] padding, int[3] stride) "
      "-> Tensor");
}
