#include "rms_norm_silu/rms_norm_silu_entry.h"

#include "common/checks.h"
#include "common/output.h"

namespace cosmos_engine::rms_norm_silu {
namespace {

constexpr const char* kOp = "rms_norm_silu";

}  // namespace

FwdCall prepare_fwd(const at::Tensor& x, const at::Tensor& gamma, bool silu) {
  TORCH_CHECK(x.dim() >= 2, kOp, ": argument 'x' must be [B, C, ...] (channels in dim 1), got shape ", x.sizes());
  check_float_dtype(x, kOp, "x");
  const int64_t channels = x.size(1);
  TORCH_CHECK(gamma.dim() >= 1 && gamma.size(0) == channels && gamma.numel() == channels, kOp,
              ": argument 'gamma' must hold one value per channel ([C] or [C, 1, ...] with C = ", channels,
              " for 'x' of shape ", x.sizes(), "), got shape ", gamma.sizes());
  TORCH_CHECK(gamma.scalar_type() == x.scalar_type() || gamma.scalar_type() == at::kFloat, kOp,
              ": argument 'gamma' must have the dtype of 'x' (", x.scalar_type(), ") or float32, got ",
              gamma.scalar_type());
  check_same_device(gamma, x, kOp, "gamma", "x");

  FwdCall c;
  // Channels innermost: a channels-last x ([B, C, T, H, W] stored as [B, T, H, W, C]) is then already
  // contiguous and read in place; any other layout is converted once.
  c.x_rows = x.movedim(1, -1);
  if (!c.x_rows.is_contiguous()) c.x_rows = c.x_rows.contiguous();
  c.gamma = gamma.reshape({channels}).contiguous();
  at::Tensor out_rows = empty_output(c.x_rows.sizes(), c.x_rows.options());
  c.out = out_rows.movedim(-1, 1);
  c.params.rows = channels == 0 ? 0 : x.numel() / channels;
  c.params.channels = channels;
  c.params.silu = silu;
  c.params.x = c.x_rows.const_data_ptr();
  c.params.gamma = c.gamma.const_data_ptr();
  c.params.out = out_rows.mutable_data_ptr();
  return c;
}

}  // namespace cosmos_engine::rms_norm_silu
