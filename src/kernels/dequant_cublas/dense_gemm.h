#pragma once
// One dense 16-bit GEMM problem through cuBLASLt, with the algorithm named and chosen explicitly:
// C[m][n] = alpha * A[m][k] * W[n][k]^T + beta * C, row-major, fp32 accumulate (the shape of every
// W4A16 call, with the weights dense). cublasGemmEx picks one algorithm per shape by heuristic and
// does not say which; here the heuristic's top candidates are listed by name so a caller can time
// them and keep the fastest (the benchmark's yardstick, bench/NOTES.md entry 29).
//
// Host code only: descriptors and the heuristic query are made once, in create(); run() is one
// cublasLtMatmul, capturable in a CUDA graph (the caller provides the workspace).

#include <cstddef>
#include <string>
#include <vector>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "w4a16/format.h"
#include "w4a16/status.h"

namespace w4a16::dequant_cublas {

struct DenseAlgorithm {
  cublasLtMatmulAlgo_t algo{};
  size_t workspace_bytes = 0;  // what this algorithm needs
  int heuristic_rank = 0;      // 1 = the heuristic's first usable choice (= candidates()[0])
  // e.g. "lt1_id66_tile20_stages34_split1_cluster3": the rank, then CUBLASLT_ALGO_CONFIG_*
  // attributes (algorithm id, tile, stages, split-K count, reduction, swizzle, cluster shape,
  // custom option; the ones at their default are left out).
  std::string name;
};

class DenseGemm {
 public:
  DenseGemm() = default;
  DenseGemm(const DenseGemm&) = delete;
  DenseGemm& operator=(const DenseGemm&) = delete;
  DenseGemm(DenseGemm&& other) noexcept;
  DenseGemm& operator=(DenseGemm&& other) noexcept;
  ~DenseGemm();

  // Describes the problem and asks cuBLASLt's heuristic for up to `max_candidates` algorithms whose
  // workspace fits `workspace_limit` bytes. Fails if the heuristic returns none.
  static Status create(cublasLtHandle_t handle, ElementType element, int m, int n, int k, size_t workspace_limit,
                       int max_candidates, DenseGemm* out);

  const std::vector<DenseAlgorithm>& candidates() const { return candidates_; }
  // The largest workspace any candidate needs.
  size_t workspace_bytes() const;

  // Enqueues the GEMM with candidates()[candidate] on `stream`; `workspace` holds at least that
  // candidate's workspace_bytes.
  cublasStatus_t run(size_t candidate, const void* a, const void* w, void* c, float alpha, float beta,
                     void* workspace, cudaStream_t stream) const;

 private:
  void release();
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t operation_ = nullptr;
  cublasLtMatrixLayout_t weights_ = nullptr, activations_ = nullptr, output_ = nullptr;
  std::vector<DenseAlgorithm> candidates_;
};

}  // namespace w4a16::dequant_cublas
