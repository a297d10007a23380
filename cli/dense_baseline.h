#pragma once
// The benchmark's dense yardstick: the best dense 16-bit GEMM cuBLAS can do at a shape. Per shape
// it times cublasGemmEx (CUBLAS_GEMM_DEFAULT, what dequant_cublas calls) and cuBLASLt's top
// heuristic candidates (each with the workspace it asks for), on the same rotating weights and
// graph method as everything else, and keeps the fastest, reported by name. Issue 18 found the
// old baseline (cublasGemmEx alone) 4-20% slower than torch.mm on the same GPU; bench/torch_check.py
// compares this one with torch.mm (bench/NOTES.md, entry 29).

#include <string>
#include <utility>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include "cli/cli_support.h"
#include "kernels/dequant_cublas/dense_gemm.h"
#include "w4a16/format.h"

namespace w4a16::cli {

class DenseBaseline {
 public:
  // How many of cuBLASLt's heuristic candidates choose() times next to cublasGemmEx.
  static constexpr int kLtCandidates = 8;
  // The most workspace a candidate may ask for (cuBLASLt's split-K algorithms want a few MB).
  static constexpr size_t kWorkspaceLimit = size_t(256) << 20;

  DenseBaseline();
  DenseBaseline(const DenseBaseline&) = delete;
  DenseBaseline& operator=(const DenseBaseline&) = delete;
  ~DenseBaseline();

  // Times every candidate at m x n x k (`repeats` replays each, the weights rotating over
  // `weights`) and keeps the fastest for enqueue(). Not inside a capture.
  void choose(ElementType element, int m, int n, int k, const void* a, const std::vector<const void*>& weights,
              void* c, cudaStream_t stream, int iterations, int repeats);

  // One call of the chosen algorithm (capturable).
  void enqueue(const void* a, const void* w, void* c, cudaStream_t stream) const;

  const std::string& name() const { return chosen_name_; }
  // Every candidate's time at the last choose(), fastest first: [{"algorithm", "us"}].
  nlohmann::json candidates_json() const;
  double gemmex_us() const { return gemmex_us_; }    // cublasGemmEx's time in choose()
  double lt_first_us() const { return lt_first_us_; }  // cuBLASLt's first heuristic choice's

  cublasHandle_t cublas() const { return cublas_; }

 private:
  void enqueue_candidate(int candidate, const void* a, const void* w, void* c, cudaStream_t stream) const;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  DeviceBuffer workspace_;
  dequant_cublas::DenseGemm lt_problem_;
  ElementType element_ = ElementType::kFloat16;
  int m_ = 0, n_ = 0, k_ = 0;
  int chosen_ = -1;  // -1: cublasGemmEx; otherwise an index into lt_problem_.candidates()
  std::string chosen_name_;
  std::vector<std::pair<std::string, double>> timings_;
  double gemmex_us_ = 0, lt_first_us_ = 0;
};

}  // namespace w4a16::cli
