#include "kernels/dequant_cublas/dense_gemm.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "common/element_type.h"

namespace w4a16::dequant_cublas {

namespace {

Status lt_error(const char* what, cublasStatus_t error) {
  return Status(StatusCode::kCublasError, std::string(what) + ": " + cublasGetStatusString(error));
}

// One CUBLASLT_ALGO_CONFIG_* attribute as an integer (they are 16- or 32-bit; 0 if the query fails).
template <typename T>
int64_t algo_attribute(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attribute) {
  T value{};
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attribute, &value, sizeof(value), &written) !=
      CUBLAS_STATUS_SUCCESS) {
    return 0;
  }
  return int64_t(value);
}

std::string algorithm_name(const cublasLtMatmulAlgo_t& algo, int rank) {
  std::string name = "lt" + std::to_string(rank);
  auto add = [&](const char* label, int64_t value, int64_t default_value) {
    if (value != default_value) name += std::string("_") + label + std::to_string(value);
  };
  add("id", algo_attribute<int32_t>(algo, CUBLASLT_ALGO_CONFIG_ID), -1);
  add("tile", algo_attribute<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID), -1);
  add("stages", algo_attribute<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID), -1);
  add("split", algo_attribute<int32_t>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), 1);
  add("reduction", algo_attribute<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME), 0);
  add("swizzle", algo_attribute<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING), 0);
  add("inner", algo_attribute<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID), 0);
  add("cluster", algo_attribute<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID), 0);
  add("custom", algo_attribute<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION), 0);
  return name;
}

}  // namespace

DenseGemm::DenseGemm(DenseGemm&& other) noexcept { *this = std::move(other); }

DenseGemm& DenseGemm::operator=(DenseGemm&& other) noexcept {
  if (this != &other) {
    release();
    handle_ = std::exchange(other.handle_, nullptr);
    operation_ = std::exchange(other.operation_, nullptr);
    weights_ = std::exchange(other.weights_, nullptr);
    activations_ = std::exchange(other.activations_, nullptr);
    output_ = std::exchange(other.output_, nullptr);
    candidates_ = std::move(other.candidates_);
  }
  return *this;
}

DenseGemm::~DenseGemm() { release(); }

void DenseGemm::release() {
  if (output_ != nullptr) cublasLtMatrixLayoutDestroy(output_);
  if (activations_ != nullptr) cublasLtMatrixLayoutDestroy(activations_);
  if (weights_ != nullptr) cublasLtMatrixLayoutDestroy(weights_);
  if (operation_ != nullptr) cublasLtMatmulDescDestroy(operation_);
  output_ = activations_ = weights_ = nullptr;
  operation_ = nullptr;
  candidates_.clear();
}

Status DenseGemm::create(cublasLtHandle_t handle, ElementType element, int m, int n, int k, size_t workspace_limit,
                         int max_candidates, DenseGemm* out) {
  if (handle == nullptr || out == nullptr || m <= 0 || n <= 0 || k <= 0 || max_candidates <= 0) {
    return Status(StatusCode::kInvalidArgument, "DenseGemm::create: null handle or output, or a size <= 0");
  }
  DenseGemm gemm;
  gemm.handle_ = handle;
  const cudaDataType_t type = cuda_data_type(element);
  // Column-major view of the row-major problem, as cublasGemmEx gets it in dequant_cublas::gemm_nt:
  // C^T (n x m, ld n) = W^T (W stored k x n, ld k, transposed) * A^T (k x m, ld k). This "TN" form
  // is the one both cuBLAS and torch.mm(A, W.t()) use.
  if (cublasStatus_t e = cublasLtMatmulDescCreate(&gemm.operation_, CUBLAS_COMPUTE_32F, CUDA_R_32F);
      e != CUBLAS_STATUS_SUCCESS) {
    return lt_error("cublasLtMatmulDescCreate", e);
  }
  const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
  if (cublasStatus_t e = cublasLtMatmulDescSetAttribute(gemm.operation_, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                                        sizeof(transpose));
      e != CUBLAS_STATUS_SUCCESS) {
    return lt_error("cublasLtMatmulDescSetAttribute(TRANSA)", e);
  }
  if (cublasStatus_t e =
          cublasLtMatmulDescSetAttribute(gemm.operation_, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep));
      e != CUBLAS_STATUS_SUCCESS) {
    return lt_error("cublasLtMatmulDescSetAttribute(TRANSB)", e);
  }
  if (cublasStatus_t e = cublasLtMatrixLayoutCreate(&gemm.weights_, type, k, n, k); e != CUBLAS_STATUS_SUCCESS) {
    return lt_error("cublasLtMatrixLayoutCreate(W)", e);
  }
  if (cublasStatus_t e = cublasLtMatrixLayoutCreate(&gemm.activations_, type, k, m, k); e != CUBLAS_STATUS_SUCCESS) {
    return lt_error("cublasLtMatrixLayoutCreate(A)", e);
  }
  if (cublasStatus_t e = cublasLtMatrixLayoutCreate(&gemm.output_, type, n, m, n); e != CUBLAS_STATUS_SUCCESS) {
    return lt_error("cublasLtMatrixLayoutCreate(C)", e);
  }

  cublasLtMatmulPreference_t preference = nullptr;
  if (cublasStatus_t e = cublasLtMatmulPreferenceCreate(&preference); e != CUBLAS_STATUS_SUCCESS) {
    return lt_error("cublasLtMatmulPreferenceCreate", e);
  }
  const uint64_t limit = workspace_limit;
  cublasStatus_t set = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &limit, sizeof(limit));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(max_candidates));
  int returned = 0;
  cublasStatus_t asked = set;
  if (set == CUBLAS_STATUS_SUCCESS) {
    asked = cublasLtMatmulAlgoGetHeuristic(handle, gemm.operation_, gemm.weights_, gemm.activations_, gemm.output_,
                                           gemm.output_, preference, max_candidates, results.data(), &returned);
  }
  cublasLtMatmulPreferenceDestroy(preference);
  if (set != CUBLAS_STATUS_SUCCESS) return lt_error("cublasLtMatmulPreferenceSetAttribute", set);
  if (asked != CUBLAS_STATUS_SUCCESS) return lt_error("cublasLtMatmulAlgoGetHeuristic", asked);
  for (int i = 0; i < returned; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    DenseAlgorithm algorithm;
    algorithm.algo = results[i].algo;
    algorithm.workspace_bytes = results[i].workspaceSize;
    // Ranks count the usable results only, so rank r is candidates()[r - 1].
    algorithm.heuristic_rank = static_cast<int>(gemm.candidates_.size()) + 1;
    algorithm.name = algorithm_name(results[i].algo, algorithm.heuristic_rank);
    gemm.candidates_.push_back(std::move(algorithm));
  }
  if (gemm.candidates_.empty()) {
    return Status(StatusCode::kCublasError, "cuBLASLt's heuristic has no algorithm for " + std::to_string(m) + "x" +
                                                std::to_string(n) + "x" + std::to_string(k));
  }
  *out = std::move(gemm);
  return Status::success();
}

size_t DenseGemm::workspace_bytes() const {
  size_t bytes = 0;
  for (const DenseAlgorithm& candidate : candidates_) bytes = std::max(bytes, candidate.workspace_bytes);
  return bytes;
}

cublasStatus_t DenseGemm::run(size_t candidate, const void* a, const void* w, void* c, float alpha, float beta,
                              void* workspace, cudaStream_t stream) const {
  if (candidate >= candidates_.size()) return CUBLAS_STATUS_INVALID_VALUE;
  const DenseAlgorithm& algorithm = candidates_[candidate];
  return cublasLtMatmul(handle_, operation_, &alpha, w, weights_, a, activations_, &beta, c, output_, c, output_,
                        &algorithm.algo, workspace, algorithm.workspace_bytes, stream);
}

}  // namespace w4a16::dequant_cublas
