#include "common/output.h"

#include <ATen/ops/empty.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace cosmos_engine {

bool poison_outputs_enabled() {
  // Read on every call so a test can switch it without reloading the library; getenv is cheap
  // next to any kernel launch.
  const char* value = std::getenv("COSMOS_ENGINE_POISON_OUTPUTS");
  return value != nullptr && std::strcmp(value, "") != 0 && std::strcmp(value, "0") != 0;
}

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_outputs_enabled()) {
    if (at::isFloatingType(out.scalar_type())) {
      out.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      out.fill_(-1);
    }
  }
  return out;
}

}  // namespace cosmos_engine
