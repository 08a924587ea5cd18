#include "adaln_norm/adaln_norm_entry.h"

#include "common/checks.h"
#include "common/output.h"

namespace cosmos_engine::adaln {
namespace {

constexpr const char* kOp = "adaln_layernorm";

at::Tensor unit_last_stride(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks x [B, L, D], shift/scale [B, T, D] and returns the geometry (strides filled by the caller).
Geometry check_geometry(const at::Tensor& x, const at::Tensor& scale, int64_t tokens_per_frame,
                        const char* x_name) {
  check_rank(x, kOp, x_name, 3, "[B, T*H*W, D]");
  check_rank(scale, kOp, "scale", 3, "[B, T, D]");
  check_float_dtype(x, kOp, x_name);
  check_same_device(scale, x, kOp, "scale", x_name);
  Geometry g;
  g.batch = x.size(0);
  g.tokens = x.size(1);
  g.dim = x.size(2);
  g.frames = scale.size(1);
  g.tokens_per_frame = tokens_per_frame;
  TORCH_CHECK(g.dim > 0, kOp, ": argument '", x_name, "' has an empty feature dimension, shape ",
              x.sizes());
  TORCH_CHECK(tokens_per_frame > 0, kOp, ": 'tokens_per_frame' must be positive, got ",
              tokens_per_frame);
  check_size(scale, kOp, "scale", 0, g.batch, "the batch size of 'x'");
  check_size(scale, kOp, "scale", 2, g.dim, "the feature size of 'x'");
  TORCH_CHECK(g.frames * tokens_per_frame == g.tokens, kOp, ": 'scale' has ", g.frames,
              " frames of ", tokens_per_frame, " tokens = ", g.frames * tokens_per_frame,
              " tokens, but argument '", x_name, "' has ", g.tokens, " tokens (shape ", x.sizes(),
              ")");
  return g;
}

}  // namespace

FwdCall prepare_fwd(const at::Tensor& x_in, const at::Tensor& shift_in, const at::Tensor& scale_in,
                    int64_t tokens_per_frame, double eps) {
  FwdCall c;
  Geometry g = check_geometry(x_in, scale_in, tokens_per_frame, "x");
  check_rank(shift_in, kOp, "shift", 3, "[B, T, D]");
  check_same_device(shift_in, x_in, kOp, "shift", "x");
  TORCH_CHECK(shift_in.sizes() == scale_in.sizes(), kOp, ": 'shift' has shape ", shift_in.sizes(),
              " but 'scale' has shape ", scale_in.sizes(), "; both must be [B, T, D]");
  TORCH_CHECK(shift_in.scalar_type() == scale_in.scalar_type(), kOp, ": 'shift' is ",
              shift_in.scalar_type(), " but 'scale' is ", scale_in.scalar_type());
  TORCH_CHECK(eps >= 0.0, kOp, ": 'eps' must be non-negative, got ", eps);
  c.x = unit_last_stride(x_in);
  // shift and scale share the strides below, so they must share a layout.
  c.shift = shift_in.contiguous();
  c.scale = scale_in.contiguous();
  g.x_batch_stride = c.x.stride(0);
  g.x_token_stride = c.x.stride(1);
  g.mod_batch_stride = c.scale.stride(0);
  g.mod_frame_stride = c.scale.stride(1);

  c.out = empty_output({g.batch, g.tokens, g.dim}, c.x.options());
  auto stat_options = c.x.options().dtype(acc_dtype(c.x));
  c.mean = empty_output({g.batch, g.tokens}, stat_options);
  c.rstd = empty_output({g.batch, g.tokens}, stat_options);

  c.params.g = g;
  c.params.x = c.x.const_data_ptr();
  c.params.shift = c.shift.const_data_ptr();
  c.params.scale = c.scale.const_data_ptr();
  c.params.out = c.out.mutable_data_ptr();
  c.params.mean = c.mean.mutable_data_ptr();
  c.params.rstd = c.rstd.mutable_data_ptr();
  c.params.eps = eps;
  return c;
}

BwdCall prepare_bwd(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                    const at::Tensor& scale_in, const at::Tensor& mean, const at::Tensor& rstd,
                    int64_t tokens_per_frame) {
  BwdCall c;
  Geometry g = check_geometry(x_in, scale_in, tokens_per_frame, "x");
  TORCH_CHECK(grad_out_in.sizes() == x_in.sizes(), kOp, ": 'grad_out' has shape ",
              grad_out_in.sizes(), " but 'x' has shape ", x_in.sizes());
  check_dtype(grad_out_in, kOp, "grad_out", x_in.scalar_type());
  check_same_device(grad_out_in, x_in, kOp, "grad_out", "x");
  for (const auto& [stat, name] : {std::pair{&mean, "mean"}, std::pair{&rstd, "rstd"}}) {
    check_rank(*stat, kOp, name, 2, "[B, T*H*W]");
    check_dtype(*stat, kOp, name, acc_dtype(x_in));
    check_same_device(*stat, x_in, kOp, name, "x");
    check_size(*stat, kOp, name, 0, g.batch, "the batch size of 'x'");
    check_size(*stat, kOp, name, 1, g.tokens, "the token count of 'x'");
  }
  c.x = unit_last_stride(x_in);
  c.grad_out = unit_last_stride(grad_out_in);
  c.scale = scale_in.contiguous();
  c.mean = mean.contiguous();
  c.rstd = rstd.contiguous();
  g.x_batch_stride = c.x.stride(0);
  g.x_token_stride = c.x.stride(1);
  g.mod_batch_stride = c.scale.stride(0);
  g.mod_frame_stride = c.scale.stride(1);

  c.grad_x = empty_output({g.batch, g.tokens, g.dim}, c.x.options());
  c.grad_shift = empty_output({g.batch, g.frames, g.dim}, c.scale.options());
  c.grad_scale = empty_output({g.batch, g.frames, g.dim}, c.scale.options());

  c.params.g = g;
  c.params.grad_out = c.grad_out.const_data_ptr();
  c.params.grad_out_batch_stride = c.grad_out.stride(0);
  c.params.grad_out_token_stride = c.grad_out.stride(1);
  c.params.x = c.x.const_data_ptr();
  c.params.scale = c.scale.const_data_ptr();
  c.params.mean = c.mean.const_data_ptr();
  c.params.rstd = c.rstd.const_data_ptr();
  c.params.grad_x = c.grad_x.mutable_data_ptr();
  c.params.grad_shift = c.grad_shift.mutable_data_ptr();
  c.params.grad_scale = c.grad_scale.mutable_data_ptr();
  return c;
}

}  // namespace cosmos_engine::adaln
