#pragma once
// The dequant_cublas family: unpack the int4 weights to dense 16-bit weights of the activation type
// in the workspace, then one cuBLAS GEMM (fp32 accumulate). Runs wherever cuBLAS does (sm_75 too).

#include <cstddef>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "w4a16/format.h"
#include "w4a16/status.h"

namespace w4a16::dequant_cublas {

struct Params {
  const void* a = nullptr;               // 16-bit operands of `element`, laid out as GemmArguments
  const void* packed_weights = nullptr;
  const void* scales = nullptr;
  const void* zeros = nullptr;           // nullptr: symmetric
  const void* bias = nullptr;
  void* c = nullptr;
  ElementType element = ElementType::kFloat16;
  int m = 0, n = 0, k = 0, group_size = 0;
  float alpha = 1.0f;
};

// cuBLAS gets its own slice of the caller's workspace so that it never allocates (graph capture).
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;
size_t workspace_bytes(int n, int k);  // the dense weights (2 bytes each, either type) + cuBLAS

// The dequantize kernel, for the runner's arch probe.
cudaError_t probe_kernel();

// cuBLASLt heuristic candidates the runner offers as configs (dequant_cublas_lt1 ..), each
// limited to the same kCublasWorkspaceBytes, so a config's workspace does not depend on the shape.
// Eight: on the H200 the winners at m >= 1024 were ranks 1-6 (bench/NOTES.md entries 29, 31).
constexpr int kLtAlgorithms = 8;

class DenseGemm;

// Enqueues dequantize + GEMM on `stream`: cublasGemmEx through `handle` when `lt` is null, else
// `lt`'s candidate `lt_candidate` (a DenseGemm made for this call's m, n, k and element).
// `workspace` must hold workspace_bytes(n, k), 256-byte aligned; the arguments are validated by
// the runner.
Status run(const Params& params, cublasHandle_t handle, const DenseGemm* lt, size_t lt_candidate, void* workspace,
           cudaStream_t stream);

// C[m][n] = alpha * A[m][k] * W[n][k]^T + beta * C, all of `element`, row-major, fp32 accumulate.
// Shared with the benchmark's dense baseline so both use exactly the same cuBLAS call.
cublasStatus_t gemm_nt(cublasHandle_t handle, ElementType element, const void* a, const void* w, void* c, int m, int n,
                       int k, float alpha, float beta);

}  // namespace w4a16::dequant_cublas
