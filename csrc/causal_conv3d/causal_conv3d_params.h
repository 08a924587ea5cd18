// Plain description of one causal_conv3d call: pointers, strides and sizes. No torch and no CUDA headers,
// so the CPU and CUDA launchers share it.
//
// The convolution reads a virtual padded input P [B, past + T, H + 2*pad_h, W + 2*pad_w, C] (channels
// last): in time, `past - cache_frames` zero frames, then the cache frames, then the frames of x; in
// height and width, zero rows/columns on both sides. The gather writes P once, in one pass over x and the
// cache read in place through their strides, so neither torch.cat nor F.pad copies ever exist.
#pragma once

#include <cstdint>

namespace cosmos_engine::causal_conv3d {

struct Geometry {
  int64_t batch = 0;         // B
  int64_t channels = 0;      // C_in
  int64_t frames = 0;        // T, frames of x
  int64_t cache_frames = 0;  // n <= past, frames of cache_x (0 without one)
  int64_t past = 0;          // frames of context in front of x
  int64_t height = 0;        // H
  int64_t width = 0;         // W
  int64_t pad_h = 0;         // zero rows above and below
  int64_t pad_w = 0;         // zero columns left and right
};

// Element strides of a [B, C, T, H, W] tensor, in its logical dimension order.
struct Strides5 {
  int64_t b = 0, c = 0, t = 0, h = 0, w = 0;
};

struct GatherParams {
  Geometry g;
  const void* x = nullptr;      // [B, C, T, H, W] with strides xs, the input dtype
  Strides5 xs;
  const void* cache = nullptr;  // [B, C, n, H, W] with strides cs, or nullptr when n == 0
  Strides5 cs;
  void* padded = nullptr;       // P, contiguous [B, past + T, Hp, Wp, C], the compute dtype
};

}  // namespace cosmos_engine::causal_conv3d
