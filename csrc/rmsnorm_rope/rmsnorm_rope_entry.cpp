#include "rmsnorm_rope/rmsnorm_rope_entry.h"

#include "common/checks.h"
#include "common/output.h"

namespace cosmos_engine::rmsnorm_rope {
namespace {

constexpr const char* kOp = "rmsnorm_rope";

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks x [B, L, H, d], the weight [d] and the optional table cos/sin [L, d]; returns the geometry and
// the contiguous table (undefined tensors without RoPE).
Geometry check_inputs(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& cos,
                      const std::optional<at::Tensor>& sin) {
  check_rank(x, kOp, "x", 4, "[B, L, heads, head_dim]");
  check_float_dtype(x, kOp, "x");
  check_rank(weight, kOp, "weight", 1, "[head_dim]");
  check_same_device(weight, x, kOp, "weight", "x");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() || weight.scalar_type() == at::kFloat, kOp,
              ": argument 'weight' must have the dtype of 'x' (", x.scalar_type(), ") or float32, got ",
              weight.scalar_type());
  Geometry g;
  g.batch = x.size(0);
  g.tokens = x.size(1);
  g.heads = x.size(2);
  g.dim = x.size(3);
  TORCH_CHECK(g.dim > 0 && g.dim % 2 == 0, kOp, ": the head dimension of 'x' must be even and positive, got ",
              g.dim, " (shape ", x.sizes(), ")");
  check_size(weight, kOp, "weight", 0, g.dim, "the head dimension of 'x'");
  TORCH_CHECK(cos.has_value() == sin.has_value(), kOp, ": give both 'cos' and 'sin' (RoPE) or neither");
  g.rope = cos.has_value();
  if (g.rope) {
    for (const auto& [t, name] : {std::pair{&*cos, "cos"}, std::pair{&*sin, "sin"}}) {
      check_rank(*t, kOp, name, 2, "[L, head_dim]");
      check_dtype(*t, kOp, name, acc_dtype(x));
      check_same_device(*t, x, kOp, name, "x");
      check_size(*t, kOp, name, 0, g.tokens, "the token count of 'x'");
      check_size(*t, kOp, name, 1, g.dim, "the head dimension of 'x'");
    }
  }
  return g;
}

}  // namespace

FwdCall prepare_fwd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& cos,
                    const std::optional<at::Tensor>& sin, double eps) {
  FwdCall c;
  const Geometry g = check_inputs(x, weight, cos, sin);
  TORCH_CHECK(eps >= 0.0, kOp, ": 'eps' must be non-negative, got ", eps);
  c.x = x.contiguous();
  c.weight = weight.contiguous();
  if (g.rope) {
    c.cos = cos->contiguous();
    c.sin = sin->contiguous();
  }
  c.out = empty_output({g.batch, g.tokens, g.heads, g.dim}, c.x.options());
  c.rstd = empty_output({g.batch, g.tokens, g.heads}, c.x.options().dtype(acc_dtype(c.x)));
  c.params.g = g;
  c.params.x = c.x.const_data_ptr();
  c.params.weight = c.weight.const_data_ptr();
  c.params.cos = g.rope ? c.cos.const_data_ptr() : nullptr;
  c.params.sin = g.rope ? c.sin.const_data_ptr() : nullptr;
  c.params.out = c.out.mutable_data_ptr();
  c.params.rstd = c.rstd.mutable_data_ptr();
  c.params.eps = eps;
  return c;
}

BwdCall prepare_bwd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                    const at::Tensor& rstd) {
  BwdCall c;
  const Geometry g = check_inputs(x, weight, cos, sin);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), kOp, ": 'grad_out' has shape ", grad_out.sizes(), " but 'x' has shape ",
              x.sizes());
  check_dtype(grad_out, kOp, "grad_out", x.scalar_type());
  check_same_device(grad_out, x, kOp, "grad_out", "x");
  check_rank(rstd, kOp, "rstd", 3, "[B, L, heads]");
  check_dtype(rstd, kOp, "rstd", acc_dtype(x));
  check_same_device(rstd, x, kOp, "rstd", "x");
  TORCH_CHECK(rstd.size(0) == g.batch && rstd.size(1) == g.tokens && rstd.size(2) == g.heads, kOp,
              ": 'rstd' has shape ", rstd.sizes(), " but 'x' has shape ", x.sizes());
  c.grad_out = grad_out.contiguous();
  c.x = x.contiguous();
  c.weight = weight.contiguous();
  c.rstd = rstd.contiguous();
  if (g.rope) {
    c.cos = cos->contiguous();
    c.sin = sin->contiguous();
  }
  c.grad_x = empty_output({g.batch, g.tokens, g.heads, g.dim}, c.x.options());
  c.grad_weight = empty_output({g.dim}, c.weight.options());
  c.params.g = g;
  c.params.grad_out = c.grad_out.const_data_ptr();
  c.params.x = c.x.const_data_ptr();
  c.params.weight = c.weight.const_data_ptr();
  c.params.cos = g.rope ? c.cos.const_data_ptr() : nullptr;
  c.params.sin = g.rope ? c.sin.const_data_ptr() : nullptr;
  c.params.rstd = c.rstd.const_data_ptr();
  c.params.grad_x = c.grad_x.mutable_data_ptr();
  c.params.grad_weight = c.grad_weight.mutable_data_ptr();
  return c;
}

}  // namespace cosmos_engine::rmsnorm_rope
