// Dtype dispatch for the (activation dtype, modulation dtype) pairs our ops accept.
#pragma once

#include <ATen/Dispatch.h>

// Runs __VA_ARGS__ with scalar_t bound to the activation dtype (fp32, fp64, bf16, fp16).
#define COSMOS_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

// Binds mod_t to scalar_t when the modulation has the activation dtype, else to float: the official
// network computes its AdaLN modulation in fp32 and casts it down, so both layouts occur.
#define COSMOS_DISPATCH_MOD(MOD_TYPE, SCALAR_T, NAME, ...)                            \
  [&] {                                                                               \
    if ((MOD_TYPE) == c10::CppTypeToScalarType<SCALAR_T>::value) {                    \
      using mod_t = SCALAR_T;                                                         \
      return __VA_ARGS__();                                                           \
    }                                                                                 \
    TORCH_CHECK((MOD_TYPE) == at::kFloat, NAME,                                       \
                ": 'shift' and 'scale' must have the dtype of 'x' or float32, got ",  \
                (MOD_TYPE));                                                          \
    using mod_t = float;                                                              \
    return __VA_ARGS__();                                                             \
  }()
