// Every op allocates its outputs here. With COSMOS_ENGINE_POISON_OUTPUTS=1 (the test suite sets it)
// outputs start as NaN (integers: -1), so an element a kernel forgets to write can never pass a test.
#pragma once

#include <ATen/core/Tensor.h>

namespace cosmos_engine {

bool poison_outputs_enabled();
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cosmos_engine
