#include "gate_residual/gate_residual_entry.h"

#include "common/checks.h"
#include "common/output.h"

namespace cosmos_engine::gate_residual {
namespace {

constexpr const char* kOp = "gate_residual";

// Checks act [B, L, D] (x or grad_out), y of the same shape, dtype and device, and the gate
// [B, T, D] of act's dtype or float32; returns the geometry.
Geometry check_geometry(const at::Tensor& act, const char* act_name, const at::Tensor& gate,
                        const at::Tensor& y, int64_t tokens_per_frame) {
  check_rank(act, kOp, act_name, 3, "[B, T*H*W, D]");
  check_rank(y, kOp, "y", 3, "[B, T*H*W, D]");
  check_rank(gate, kOp, "gate", 3, "[B, T, D]");
  check_float_dtype(act, kOp, act_name);
  check_dtype(y, kOp, "y", act.scalar_type());
  TORCH_CHECK(gate.scalar_type() == act.scalar_type() || gate.scalar_type() == at::kFloat, kOp,
              ": argument 'gate' must have the dtype of '", act_name, "' (", act.scalar_type(),
              ") or float32, got ", gate.scalar_type());
  check_same_device(y, act, kOp, "y", act_name);
  check_same_device(gate, act, kOp, "gate", act_name);
  TORCH_CHECK(y.sizes() == act.sizes(), kOp, ": argument 'y' has shape ", y.sizes(), " but '", act_name,
              "' has shape ", act.sizes());
  Geometry g;
  g.batch = act.size(0);
  g.tokens = act.size(1);
  g.dim = act.size(2);
  g.frames = gate.size(1);
  g.tokens_per_frame = tokens_per_frame;
  TORCH_CHECK(tokens_per_frame > 0, kOp, ": 'tokens_per_frame' must be positive, got ", tokens_per_frame);
  check_size(gate, kOp, "gate", 0, g.batch, "the batch size of 'y'");
  check_size(gate, kOp, "gate", 2, g.dim, "the feature size of 'y'");
  TORCH_CHECK(g.frames * tokens_per_frame == g.tokens, kOp, ": 'gate' has ", g.frames, " frames of ",
              tokens_per_frame, " tokens = ", g.frames * tokens_per_frame, " tokens, but argument 'y' has ",
              g.tokens, " tokens (shape ", y.sizes(), ")");
  return g;
}

}  // namespace

FwdCall prepare_fwd(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, int64_t tokens_per_frame) {
  FwdCall c;
  const Geometry g = check_geometry(x, "x", gate, y, tokens_per_frame);
  c.x = x.contiguous();
  c.gate = gate.contiguous();
  c.y = y.contiguous();
  c.out = empty_output({g.batch, g.tokens, g.dim}, c.x.options());
  c.params.g = g;
  c.params.x = c.x.const_data_ptr();
  c.params.gate = c.gate.const_data_ptr();
  c.params.y = c.y.const_data_ptr();
  c.params.out = c.out.mutable_data_ptr();
  return c;
}

BwdCall prepare_bwd(const at::Tensor& grad_out, const at::Tensor& gate, const at::Tensor& y,
                    int64_t tokens_per_frame) {
  BwdCall c;
  const Geometry g = check_geometry(grad_out, "grad_out", gate, y, tokens_per_frame);
  c.grad_out = grad_out.contiguous();
  c.gate = gate.contiguous();
  c.y = y.contiguous();
  c.grad_y = empty_output({g.batch, g.tokens, g.dim}, c.y.options());
  c.grad_gate = empty_output({g.batch, g.frames, g.dim}, c.gate.options());
  c.params.g = g;
  c.params.grad_out = c.grad_out.const_data_ptr();
  c.params.gate = c.gate.const_data_ptr();
  c.params.y = c.y.const_data_ptr();
  c.params.grad_y = c.grad_y.mutable_data_ptr();
  c.params.grad_gate = c.grad_gate.mutable_data_ptr();
  return c;
}

}  // namespace cosmos_engine::gate_residual
