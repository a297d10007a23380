#include "cli/dense_baseline.h"

#include <algorithm>
#include <cstdio>

#include "cli/bench_support.h"
#include "kernels/dequant_cublas/dequant_cublas.h"

namespace w4a16::cli {

DenseBaseline::DenseBaseline() {
  if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS) throw CliError("cublasCreate failed");
  if (cublasLtCreate(&lt_) != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(cublas_);
    throw CliError("cublasLtCreate failed");
  }
  workspace_ = DeviceBuffer(dequant_cublas::kCublasWorkspaceBytes);
}

DenseBaseline::~DenseBaseline() {
  lt_problem_ = dequant_cublas::DenseGemm();  // its descriptors go before the handle
  cublasLtDestroy(lt_);
  cublasDestroy(cublas_);
}

void DenseBaseline::enqueue_candidate(int candidate, const void* a, const void* w, void* c,
                                      cudaStream_t stream) const {
  if (candidate < 0) {
    // cublasSetStream resets the workspace to cuBLAS's own pool, so the workspace is set after it
    // (as dequant_cublas::run does); cuBLAS then never allocates, which graph capture needs.
    if (cublasSetStream(cublas_, stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(cublas_, workspace_.get(), dequant_cublas::kCublasWorkspaceBytes) !=
            CUBLAS_STATUS_SUCCESS) {
      throw CliError("cublasSetStream / cublasSetWorkspace failed");
    }
    if (const cublasStatus_t e = dequant_cublas::gemm_nt(cublas_, element_, a, w, c, m_, n_, k_, 1.0f, 0.0f);
        e != CUBLAS_STATUS_SUCCESS) {
      throw CliError(std::string("cublasGemmEx: ") + cublasGetStatusString(e));
    }
    return;
  }
  if (const cublasStatus_t e = lt_problem_.run(size_t(candidate), a, w, c, 1.0f, 0.0f, workspace_.get(), stream);
      e != CUBLAS_STATUS_SUCCESS) {
    throw CliError(std::string("cublasLtMatmul (") + lt_problem_.candidates()[size_t(candidate)].name +
                   "): " + cublasGetStatusString(e));
  }
}

void DenseBaseline::choose(ElementType element, int m, int n, int k, const void* a,
                           const std::vector<const void*>& weights, void* c, cudaStream_t stream, int iterations,
                           int repeats) {
  element_ = element;
  m_ = m;
  n_ = n;
  k_ = k;
  check_status(dequant_cublas::DenseGemm::create(lt_, element, m, n, k, kWorkspaceLimit, kLtCandidates, &lt_problem_),
               "cuBLASLt problem");
  const size_t need = std::max(lt_problem_.workspace_bytes(), dequant_cublas::kCublasWorkspaceBytes);
  if (workspace_.bytes() < need) {
    check_cuda(cudaStreamSynchronize(stream), "before the workspace grows");
    workspace_ = DeviceBuffer(need);
  }
  timings_.clear();
  gemmex_us_ = lt_first_us_ = 0;
  const int candidates = int(lt_problem_.candidates().size());
  int best = -1;
  double best_us = 0;
  for (int candidate = -1; candidate < candidates; ++candidate) {
    const std::string name = candidate < 0 ? "gemmex_default" : lt_problem_.candidates()[size_t(candidate)].name;
    Timing t;
    try {
      t = time_graph(
          [&](int i) { enqueue_candidate(candidate, a, weights[size_t(i) % weights.size()], c, stream); },
          iterations, repeats, stream);
    } catch (const CliError& error) {
      // A candidate the heuristic offered but that does not run here is left out, not fatal;
      // cublasGemmEx (candidate -1) must run.
      if (candidate < 0) throw;
      std::fprintf(stderr, "# cuBLASLt candidate %s left out: %s\n", name.c_str(), error.what());
      cudaGetLastError();
      continue;
    }
    timings_.emplace_back(name, t.median_us);
    if (candidate == -1) gemmex_us_ = t.median_us;
    if (candidate == 0) lt_first_us_ = t.median_us;
    if (candidate == -1 || t.median_us < best_us) {
      best = candidate;
      best_us = t.median_us;
    }
  }
  chosen_ = best;
  chosen_name_ = best < 0 ? "gemmex_default" : lt_problem_.candidates()[size_t(best)].name;
}

void DenseBaseline::enqueue(const void* a, const void* w, void* c, cudaStream_t stream) const {
  enqueue_candidate(chosen_, a, w, c, stream);
}

nlohmann::json DenseBaseline::candidates_json() const {
  std::vector<std::pair<std::string, double>> sorted = timings_;
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& x, const auto& y) { return x.second < y.second; });
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [name, us] : sorted) list.push_back({{"algorithm", name}, {"us", us}});
  return list;
}

}  // namespace w4a16::cli
