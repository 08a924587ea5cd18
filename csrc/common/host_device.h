// Lets one inline function serve both the CPU kernels (compiled by the host compiler) and the CUDA
// kernels (nvcc), so the CPU tests exercise the same per-element math that runs on the GPU.
#pragma once

#if defined(__CUDACC__)
#define COSMOS_HD __host__ __device__ __forceinline__
#else
#define COSMOS_HD inline
#endif
