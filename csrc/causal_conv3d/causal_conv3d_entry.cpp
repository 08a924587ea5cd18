#include "causal_conv3d/causal_conv3d_entry.h"

#include "causal_conv3d/causal_conv3d_math.h"
#include "common/checks.h"
#include "common/output.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty.h>
#include <c10/core/MemoryFormat.h>

namespace cosmos_engine::causal_conv3d {
namespace {

constexpr const char* kOp = "causal_conv3d";

Strides5 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

void check_triple(at::IntArrayRef v, const char* name, int64_t min_value, const char* what) {
  TORCH_CHECK(v.size() == 3, kOp, ": argument '", name, "' must have 3 entries ", what, ", got ", v);
  for (int64_t e : v) {
    TORCH_CHECK(e >= min_value, kOp, ": argument '", name, "' must be ", what, " with every entry >= ", min_value,
                ", got ", v);
  }
}

}  // namespace

Call prepare(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
             const std::optional<at::Tensor>& cache_x, at::IntArrayRef padding, at::IntArrayRef stride,
             at::ScalarType compute) {
  check_rank(x, kOp, "x", 5, "[B, C, T, H, W]");
  check_float_dtype(x, kOp, "x");
  check_rank(weight, kOp, "weight", 5, "[C_out, C_in, kT, kH, kW]");
  check_dtype(weight, kOp, "weight", x.scalar_type());
  check_same_device(weight, x, kOp, "weight", "x");
  check_size(weight, kOp, "weight", 1, x.size(1), "the channel count of 'x'");
  if (bias.has_value()) {
    check_rank(*bias, kOp, "bias", 1, "[C_out]");
    check_dtype(*bias, kOp, "bias", x.scalar_type());
    check_same_device(*bias, x, kOp, "bias", "x");
    check_size(*bias, kOp, "bias", 0, weight.size(0), "C_out of 'weight'");
  }
  check_triple(padding, "padding", 0, "(past, height, width)");
  check_triple(stride, "stride", 1, "(sT, sH, sW)");

  Call c;
  Geometry& g = c.params.g;
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.frames = x.size(2);
  g.height = x.size(3);
  g.width = x.size(4);
  g.past = padding[0];
  g.pad_h = padding[1];
  g.pad_w = padding[2];
  if (cache_x.has_value()) {
    const at::Tensor& cache = *cache_x;
    check_rank(cache, kOp, "cache_x", 5, "[B, C, n, H, W]");
    check_dtype(cache, kOp, "cache_x", x.scalar_type());
    check_same_device(cache, x, kOp, "cache_x", "x");
    for (int64_t d : {0, 1, 3, 4}) check_size(cache, kOp, "cache_x", d, x.size(d), "the same dimension of 'x'");
    TORCH_CHECK(cache.size(2) <= g.past, kOp, ": argument 'cache_x' holds ", cache.size(2),
                " frames but 'padding' allows only ", g.past, " frames of past context");
    g.cache_frames = cache.size(2);
  }
  TORCH_CHECK(padded_frames(g) >= weight.size(2), kOp, ": ", g.frames, " frames of 'x' plus ", g.past,
              " of past context are fewer than the temporal kernel size ", weight.size(2));
  TORCH_CHECK(padded_height(g) >= weight.size(3) && padded_width(g) >= weight.size(4), kOp, ": argument 'x' of ",
              g.height, "x", g.width, " pixels padded by ", g.pad_h, "x", g.pad_w,
              " is smaller than the kernel of 'weight' ", weight.sizes());
  for (int d = 0; d < 3; ++d) c.stride[d] = stride[d];

  c.x = x;
  c.gather = g.past > 0 || g.pad_h > 0 || g.pad_w > 0;
  if (!c.gather) {
    // x alone is the input: no copy when it already is channels-last in `compute`, else one conversion.
    if (x.scalar_type() == compute && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
      c.conv_input = x;
    } else {
      c.conv_input = at::empty(x.sizes(), x.options().dtype(compute).memory_format(at::MemoryFormat::ChannelsLast3d));
      c.conv_input.copy_(x);
    }
    return c;
  }
  at::Tensor padded = empty_output({g.batch, padded_frames(g), padded_height(g), padded_width(g), g.channels},
                                   x.options().dtype(compute));
  c.conv_input = padded.permute({0, 4, 1, 2, 3});  // [B, C, Tp, Hp, Wp] with channels_last_3d strides
  c.params.x = x.const_data_ptr();
  c.params.xs = strides_of(x);
  if (g.cache_frames > 0) {
    c.cache = *cache_x;
    c.params.cache = c.cache.const_data_ptr();
    c.params.cs = strides_of(c.cache);
  }
  c.params.padded = padded.mutable_data_ptr();
  return c;
}

at::Tensor convolve(const Call& c, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    at::ScalarType compute) {
  std::optional<at::Tensor> conv_bias;
  if (bias.has_value()) conv_bias = bias->to(compute);
  const bool pointwise = weight.size(2) == 1 && weight.size(3) == 1 && weight.size(4) == 1 && c.stride[0] == 1 &&
                         c.stride[1] == 1 && c.stride[2] == 1 && !c.gather;
  if (pointwise) {
    // A 1x1x1 conv of channels-last x is one GEMM: [B*T*H*W, C_in] x [C_in, C_out], its result already
    // channels-last. (ATen's conv picks its unblocked native path for these shapes, which converts to
    // channels-first and back.)
    const at::Tensor& in = c.conv_input;
    const int64_t cout = weight.size(0), cin = weight.size(1);
    const at::Tensor rows = in.permute({0, 2, 3, 4, 1}).reshape({-1, cin});
    const at::Tensor w = weight.to(compute).reshape({cout, cin}).t();
    at::Tensor flat = empty_output({rows.size(0), cout}, rows.options());
    if (conv_bias.has_value()) {
      at::addmm_out(flat, *conv_bias, rows, w);
    } else {
      at::mm_out(flat, rows, w);
    }
    at::Tensor out = flat.view({in.size(0), in.size(2), in.size(3), in.size(4), cout}).permute({0, 4, 1, 2, 3});
    if (out.scalar_type() == c.x.scalar_type()) return out;
    at::Tensor result = empty_output(out.sizes(), out.options().dtype(c.x.scalar_type())
                                                      .memory_format(at::MemoryFormat::ChannelsLast3d));
    return result.copy_(out);
  }
  at::Tensor out = at::convolution(c.conv_input, weight.to(compute), conv_bias, {c.stride[0], c.stride[1], c.stride[2]},
                                   {0, 0, 0}, {1, 1, 1}, /*transposed=*/false, {0, 0, 0}, /*groups=*/1);
  // The contract: channels_last_3d with the canonical strides (what the fake returns), in x's dtype.
  const auto canonical = c10::get_channels_last_strides_3d(out.sizes());
  if (out.scalar_type() == c.x.scalar_type() && out.strides() == at::IntArrayRef(canonical)) return out;
  at::Tensor result = empty_output(out.sizes(), out.options().dtype(c.x.scalar_type())
                                                    .memory_format(at::MemoryFormat::ChannelsLast3d));
  result.copy_(out);
  return result;
}

}  // namespace cosmos_engine::causal_conv3d
