// Host-side argument checking and output allocation for attention, shared by every device's entry point.
#pragma once

#include "attention/attention_params.h"

#include <ATen/core/Tensor.h>

namespace cosmos_engine::attention {

struct FwdCall {
  FwdParams params;
  at::Tensor q, k, v, out, lse;  // inputs (copied only when their last dimension is strided), kept alive
};

struct BwdCall {
  BwdParams params;
  at::Tensor grad_out, q, k, v, out, lse, dq, dk, dv;
};

FwdCall prepare_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
BwdCall prepare_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& out, const at::Tensor& lse);

}  // namespace cosmos_engine::attention
