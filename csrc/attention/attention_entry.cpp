#include "attention/attention_entry.h"

#include "common/checks.h"
#include "common/output.h"

#include <cmath>

namespace cosmos_engine::attention {
namespace {

constexpr const char* kOp = "attention";
constexpr const char* kLayout = "[B, L, heads, head_dim]";

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The kernels read [B, L, H, D] through strides but need unit stride along D.
at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

Geometry check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_rank(q, kOp, "q", 4, kLayout);
  check_rank(k, kOp, "k", 4, kLayout);
  check_rank(v, kOp, "v", 4, kLayout);
  check_float_dtype(q, kOp, "q");
  check_dtype(k, kOp, "k", q.scalar_type());
  check_dtype(v, kOp, "v", q.scalar_type());
  check_same_device(k, q, kOp, "k", "q");
  check_same_device(v, q, kOp, "v", "q");
  Geometry g;
  g.batch = q.size(0);
  g.q_len = q.size(1);
  g.heads = q.size(2);
  g.dim = q.size(3);
  g.kv_len = k.size(1);
  TORCH_CHECK(g.dim > 0 && g.dim % 8 == 0 && g.dim <= 256, kOp,
              ": the head dimension of 'q' must be a multiple of 8 up to 256, got ", g.dim, " (shape ", q.sizes(), ")");
  TORCH_CHECK(g.kv_len > 0, kOp, ": 'k' must have at least one token, got shape ", k.sizes());
  check_size(k, kOp, "k", 0, g.batch, "the batch size of 'q'");
  check_size(k, kOp, "k", 2, g.heads, "the head count of 'q'");
  check_size(k, kOp, "k", 3, g.dim, "the head dimension of 'q'");
  TORCH_CHECK(v.sizes() == k.sizes(), kOp, ": 'v' has shape ", v.sizes(), " but 'k' has shape ", k.sizes());
  return g;
}

void check_like_q(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK(t.sizes() == q.sizes(), kOp, ": '", name, "' has shape ", t.sizes(), " but 'q' has shape ", q.sizes());
  check_dtype(t, kOp, name, q.scalar_type());
  check_same_device(t, q, kOp, name, "q");
}

}  // namespace

FwdCall prepare_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  FwdCall c;
  const Geometry g = check_inputs(q, k, v);
  c.q = unit_last_stride(q);
  c.k = unit_last_stride(k);
  c.v = unit_last_stride(v);
  c.out = empty_output({g.batch, g.q_len, g.heads, g.dim}, q.options());
  c.lse = empty_output({g.batch, g.heads, g.q_len}, q.options().dtype(acc_dtype(q)));
  c.params.g = g;
  c.params.q = c.q.const_data_ptr();
  c.params.k = c.k.const_data_ptr();
  c.params.v = c.v.const_data_ptr();
  c.params.sq = strides_of(c.q);
  c.params.sk = strides_of(c.k);
  c.params.sv = strides_of(c.v);
  c.params.out = c.out.mutable_data_ptr();
  c.params.lse = c.lse.mutable_data_ptr();
  c.params.scale = 1.0 / std::sqrt(static_cast<double>(g.dim));
  return c;
}

BwdCall prepare_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& out, const at::Tensor& lse) {
  BwdCall c;
  const Geometry g = check_inputs(q, k, v);
  check_rank(grad_out, kOp, "grad_out", 4, kLayout);
  check_like_q(grad_out, q, "grad_out");
  check_rank(out, kOp, "out", 4, kLayout);
  check_like_q(out, q, "out");
  check_rank(lse, kOp, "lse", 3, "[B, heads, Lq]");
  check_dtype(lse, kOp, "lse", acc_dtype(q));
  check_same_device(lse, q, kOp, "lse", "q");
  TORCH_CHECK(lse.size(0) == g.batch && lse.size(1) == g.heads && lse.size(2) == g.q_len, kOp, ": 'lse' has shape ",
              lse.sizes(), " but 'q' has shape ", q.sizes(), " (expected [B, heads, Lq])");
  c.grad_out = unit_last_stride(grad_out);
  c.q = unit_last_stride(q);
  c.k = unit_last_stride(k);
  c.v = unit_last_stride(v);
  c.out = unit_last_stride(out);
  c.lse = lse.contiguous();
  c.dq = empty_output({g.batch, g.q_len, g.heads, g.dim}, q.options());
  c.dk = empty_output({g.batch, g.kv_len, g.heads, g.dim}, q.options());
  c.dv = empty_output({g.batch, g.kv_len, g.heads, g.dim}, q.options());
  c.params.g = g;
  c.params.grad_out = c.grad_out.const_data_ptr();
  c.params.q = c.q.const_data_ptr();
  c.params.k = c.k.const_data_ptr();
  c.params.v = c.v.const_data_ptr();
  c.params.out = c.out.const_data_ptr();
  c.params.lse = c.lse.const_data_ptr();
  c.params.sdo = strides_of(c.grad_out);
  c.params.sq = strides_of(c.q);
  c.params.sk = strides_of(c.k);
  c.params.sv = strides_of(c.v);
  c.params.so = strides_of(c.out);
  c.params.dq = c.dq.mutable_data_ptr();
  c.params.dk = c.dk.mutable_data_ptr();
  c.params.dv = c.dv.mutable_data_ptr();
  c.params.scale = 1.0 / std::sqrt(static_cast<double>(g.dim));
  return c;
}

}  // namespace cosmos_engine::attention
