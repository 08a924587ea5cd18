// Argument checks for op entry points. Every message names the argument, what was expected and what
// was received, because these errors reach users through the model code.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string_view>

namespace cosmos_engine {

inline void check_rank(const at::Tensor& t, std::string_view op, std::string_view name, int64_t rank,
                       std::string_view layout) {
  TORCH_CHECK(t.dim() == rank, op, ": argument '", name, "' must have ", rank, " dimensions ", layout,
              ", got shape ", t.sizes());
}

inline void check_float_dtype(const at::Tensor& t, std::string_view op, std::string_view name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble, op,
              ": argument '", name, "' must be float32, bfloat16, float16 or float64, got ", dt);
}

inline void check_dtype(const at::Tensor& t, std::string_view op, std::string_view name,
                        at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, op, ": argument '", name, "' must be ", expected, ", got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, std::string_view op,
                              std::string_view name, std::string_view ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": argument '", name, "' is on ", t.device(), " but '",
              ref_name, "' is on ", ref.device(), "; all arguments must be on one device");
}

inline void check_size(const at::Tensor& t, std::string_view op, std::string_view name, int64_t dim,
                       int64_t expected, std::string_view what) {
  TORCH_CHECK(t.size(dim) == expected, op, ": argument '", name, "' has size ", t.size(dim),
              " in dimension ", dim, " but ", what, " is ", expected, " (shape ", t.sizes(), ")");
}

}  // namespace cosmos_engine
