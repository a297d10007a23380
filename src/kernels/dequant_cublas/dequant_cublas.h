#pragma once
// The dequant_cublas family: unpack the int4 weights to dense fp16 in the workspace, then one
// cuBLAS fp16 GEMM (fp32 accumulate). Runs wherever cuBLAS does (sm_75 too).

#include <cstddef>

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "w4a16/status.h"

namespace w4a16::dequant_cublas {

struct Params {
  const __half* a = nullptr;
  const void* packed_weights = nullptr;
  const __half* scales = nullptr;
  const __half* bias = nullptr;
  __half* c = nullptr;
  int m = 0, n = 0, k = 0, group_size = 0;
  float alpha = 1.0f;
};

// cuBLAS gets its own slice of the caller's workspace so that it never allocates (graph capture).
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;
size_t workspace_bytes(int n, int k);

// The dequantize kernel, for the runner's arch probe.
cudaError_t probe_kernel();

// Enqueues dequantize + GEMM on `stream`. `workspace` must hold workspace_bytes(n, k), 256-byte
// aligned; the arguments are validated by the runner.
Status run(const Params& params, cublasHandle_t handle, void* workspace, cudaStream_t stream);

// C[m][n] = alpha * A[m][k] * W[n][k]^T + beta * C, all fp16 row-major, fp32 accumulate. Shared
// with the benchmark's dense fp16 baseline so both use exactly the same cuBLAS call.
cublasStatus_t gemm_fp16_nt(cublasHandle_t handle, const __half* a, const __half* w, __half* c, int m, int n, int k,
                            float alpha, float beta);

}  // namespace w4a16::dequant_cublas
