// Index math of causal_conv3d's padded input, shared by the CPU and CUDA gathers (COSMOS_HD).
//
// Padded frame tp of P is, for `zeros = past - cache_frames`:
//     tp <  zeros                 a zero frame
//     zeros <= tp < past          cache frame tp - zeros
//     past <= tp                  frame tp - past of x
// and padded row hp / column wp is row hp - pad_h / column wp - pad_w of that frame, zero outside [0, H) / [0, W).
#pragma once

#include "causal_conv3d/causal_conv3d_params.h"
#include "common/host_device.h"

namespace cosmos_engine::causal_conv3d {

COSMOS_HD int64_t padded_frames(const Geometry& g) { return g.past + g.frames; }
COSMOS_HD int64_t padded_height(const Geometry& g) { return g.height + 2 * g.pad_h; }
COSMOS_HD int64_t padded_width(const Geometry& g) { return g.width + 2 * g.pad_w; }

// Output length of one dimension: a kernel of `k` with stride `s` over `n` padded positions.
COSMOS_HD int64_t conv_out_size(int64_t n, int64_t k, int64_t s) { return (n - k) / s + 1; }

// Where the padded (b, tp, hp) row of P comes from: `base` is the element offset of its (w = 0, c = 0)
// element in x or in the cache (`from_cache`), and `zero` says the whole row is padding.
struct RowSource {
  bool zero = true;
  bool from_cache = false;
  int64_t base = 0;
};

COSMOS_HD RowSource row_source(const GatherParams& p, int64_t b, int64_t tp, int64_t hp) {
  const Geometry& g = p.g;
  RowSource r;
  const int64_t h = hp - g.pad_h;
  const int64_t zeros = g.past - g.cache_frames;
  if (h < 0 || h >= g.height || tp < zeros) return r;
  r.zero = false;
  if (tp < g.past) {
    r.from_cache = true;
    r.base = b * p.cs.b + (tp - zeros) * p.cs.t + h * p.cs.h;
  } else {
    r.base = b * p.xs.b + (tp - g.past) * p.xs.t + h * p.xs.h;
  }
  return r;
}

}  // namespace cosmos_engine::causal_conv3d
