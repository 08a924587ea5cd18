# Locate torch, the NVIDIA wheels, CUTLASS and nvcc by asking Python (cmake/probe_python.py), then
# define the imported target `cosmos_torch` and decide whether the CUDA sources are built.
#
# Inputs:  COSMOS_ENGINE_CUDA = AUTO | ON | OFF, TORCH_CUDA_ARCH_LIST (default: COSMOS_DEFAULT_CUDA_ARCH_LIST).
# Outputs: COSMOS_BUILD_CUDA (ON/OFF), COSMOS_CUDA_WHY (one line), target cosmos_torch, and the archs:
#          COSMOS_CUDA_ARCH_LIST (torch's spelling), COSMOS_CUDA_CUBINS (sm_XY), COSMOS_CUDA_PTX (compute_XY).
#
# We do not use torch's own TorchConfig.cmake: with a CUDA build of torch it insists on a complete CUDA
# toolkit even for a CPU-only extension, and it ignores CMAKE_CUDA_ARCHITECTURES.

if(NOT Python_EXECUTABLE)
  find_package(Python COMPONENTS Interpreter REQUIRED)
endif()

execute_process(
  COMMAND "${Python_EXECUTABLE}" "${CMAKE_CURRENT_LIST_DIR}/probe_python.py"
  OUTPUT_VARIABLE _probe_out
  ERROR_VARIABLE _probe_err
  RESULT_VARIABLE _probe_rc)
if(NOT _probe_rc EQUAL 0)
  message(FATAL_ERROR "Asking ${Python_EXECUTABLE} about torch failed (is torch installed in the "
                      "interpreter that builds? use pip install --no-build-isolation):\n${_probe_err}")
endif()
set(_probe_file "${CMAKE_CURRENT_BINARY_DIR}/cosmos_probe.cmake")
file(WRITE "${_probe_file}" "${_probe_out}")
include("${_probe_file}")

# --- torch as an imported target -------------------------------------------------------------------
add_library(cosmos_torch INTERFACE)
target_include_directories(cosmos_torch SYSTEM INTERFACE ${COSMOS_TORCH_INCLUDE_DIRS})
target_compile_definitions(cosmos_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${COSMOS_TORCH_CXX11_ABI})
foreach(_lib c10 torch_cpu torch)
  find_library(COSMOS_LIB_${_lib} NAMES ${_lib} PATHS "${COSMOS_TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(cosmos_torch INTERFACE "${COSMOS_LIB_${_lib}}")
endforeach()

# --- CUDA: decide, with a reason ---------------------------------------------------------------------
set(COSMOS_ENGINE_CUDA "AUTO" CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
set_property(CACHE COSMOS_ENGINE_CUDA PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${COSMOS_ENGINE_CUDA}" _cuda_mode)
if(NOT _cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "COSMOS_ENGINE_CUDA must be AUTO, ON or OFF, got '${COSMOS_ENGINE_CUDA}'")
endif()

set(COSMOS_BUILD_CUDA OFF)
if(_cuda_mode STREQUAL "OFF")
  set(COSMOS_CUDA_WHY "disabled by COSMOS_ENGINE_CUDA=OFF")
elseif(COSMOS_TORCH_CUDA_VERSION STREQUAL "")
  set(COSMOS_CUDA_WHY "torch ${COSMOS_TORCH_VERSION} is a CPU-only build")
elseif(COSMOS_NVCC STREQUAL "")
  set(COSMOS_CUDA_WHY "${COSMOS_NVCC_WHY_NOT}")
else()
  set(COSMOS_BUILD_CUDA ON)
  set(COSMOS_CUDA_WHY "torch has CUDA ${COSMOS_TORCH_CUDA_VERSION} and nvcc is ${COSMOS_NVCC}")
endif()
if(_cuda_mode STREQUAL "ON" AND NOT COSMOS_BUILD_CUDA)
  message(FATAL_ERROR "COSMOS_ENGINE_CUDA=ON but the CUDA kernels cannot be built: ${COSMOS_CUDA_WHY}")
endif()

if(COSMOS_BUILD_CUDA)
  # The shipped default covers the GPUs users post-train on: A100 (8.0), RTX 30xx/A40 (8.6), L40S/RTX 40xx
  # (8.9), H100/H200 (9.0a), B200/GB200 (10.0a), RTX 50xx/RTX PRO 6000 (12.0), plus PTX of the highest for
  # later GPUs to JIT. Our kernels use no arch-specific ("a") feature, so the "a" cubins are plain code.
  set(COSMOS_DEFAULT_CUDA_ARCH_LIST "8.0;8.6;8.9;9.0a;10.0a;12.0+PTX")
  if(NOT TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "${COSMOS_DEFAULT_CUDA_ARCH_LIST}")
  endif()
  # TORCH_CUDA_ARCH_LIST uses torch's spelling ("8.0;9.0a;12.0+PTX"); CMake wants "80-real;90a-real;120"
  # (-real: cubin only; no suffix: cubin and PTX). The cubin and PTX lists go into build_info, from which
  # cosmos_engine.ops decides at run time whether a GPU can run our kernels.
  string(REPLACE " " ";" _archs "${TORCH_CUDA_ARCH_LIST}")
  set(COSMOS_CUDA_ARCH_LIST "")
  set(COSMOS_CUDA_ARCHS "")
  set(COSMOS_CUDA_CUBINS "")
  set(COSMOS_CUDA_PTX "")
  foreach(_arch ${_archs})
    if(NOT _arch MATCHES "^([0-9]+)\\.([0-9])(a?)(\\+PTX)?$")
      message(FATAL_ERROR "TORCH_CUDA_ARCH_LIST entry '${_arch}' is not of the form 9.0, 9.0a or 12.0+PTX")
    endif()
    set(_sm "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
    list(APPEND COSMOS_CUDA_ARCH_LIST "${_arch}")
    list(APPEND COSMOS_CUDA_CUBINS "sm_${_sm}")
    if(CMAKE_MATCH_4)
      list(APPEND COSMOS_CUDA_ARCHS "${_sm}")
      list(APPEND COSMOS_CUDA_PTX "compute_${_sm}")
    else()
      list(APPEND COSMOS_CUDA_ARCHS "${_sm}-real")
    endif()
  endforeach()
  set(CMAKE_CUDA_COMPILER "${COSMOS_NVCC}")
  set(CUDAToolkit_ROOT "${COSMOS_CUDA_TOOLKIT_ROOT}")
  set(CMAKE_CUDA_ARCHITECTURES ${COSMOS_CUDA_ARCHS})
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)  # the same libcudart.so that torch loads
  enable_language(CUDA)
  foreach(_lib c10_cuda torch_cuda)
    find_library(COSMOS_LIB_${_lib} NAMES ${_lib} PATHS "${COSMOS_TORCH_LIB_DIR}" NO_DEFAULT_PATH REQUIRED)
    target_link_libraries(cosmos_torch INTERFACE "${COSMOS_LIB_${_lib}}")
  endforeach()
  # ATen's CUDA headers include cublas_v2.h and cusparse.h, which only the nvidia wheels carry here.
  target_include_directories(cosmos_torch SYSTEM INTERFACE ${COSMOS_NVIDIA_WHEEL_INCLUDE_DIRS})
else()
  set(COSMOS_CUDA_ARCH_LIST "")
  set(COSMOS_CUDA_CUBINS "")
  set(COSMOS_CUDA_PTX "")
endif()
