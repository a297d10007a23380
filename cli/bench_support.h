#pragma once
// The benchmark's method, shared by `w4a16 bench` and `w4a16 bench --moe`: graph timing with a
// settled warm-up, the rotation rule, the ceilings measured in the same run, and the JSON
// environment block.

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include "w4a16/format.h"
#include "w4a16/runner.h"

namespace w4a16::cli {

struct Timing {
  double median_us = 0, min_us = 0;
  int iterations = 0;
};

// Captures `iterations` calls of enqueue(i) into a graph, replays it until its time settles (at
// least min_warm_up_ms), then times `repeats` replays: the per-call median and minimum.
Timing time_graph(const std::function<void(int)>& enqueue, int iterations, int repeats, cudaStream_t stream,
                  double min_warm_up_ms = 25);

// Minimum warm-up of a timing that follows a compute-heavy phase (the ceilings, or the previous
// layer's largest m): long enough for the SM clock to come back.
constexpr double kSettleAfterComputeMs = 3000;

// Enough calls per replay that one replay lasts ~2 ms (launch and event noise become negligible).
int iterations_for(double expected_us);
// Copies of a `bytes`-sized buffer needed so that their total exceeds 4x L2 (at least 2).
int copies_for(size_t bytes, size_t l2_bytes);

struct Ceilings {
  double hbm_read_gbps = 0;
  double fp16_tflops = 0;  // of the run's activation type (fp16 or bf16), by the best cuBLAS
  std::vector<std::pair<std::string, double>> fp16_by_shape;
};
Ceilings measure_ceilings(cublasHandle_t cublas, void* cublas_workspace, int sm_count, cudaStream_t stream,
                          int repeats, ElementType element);

std::string git_commit();
nlohmann::json environment_json(const cudaDeviceProp& properties, int device);
void write_json(const nlohmann::json& document, const std::string& path);

struct MoeBenchOptions {
  std::string dtype = "fp16";
  bool zeros = false, float_zeros = false;
  int group = 128;
  int repeats = 9;
  std::string json;
  std::vector<int> tokens = {1, 16, 64, 512, 4096};
  std::vector<KernelConfig> configs;  // timed next to the default in every case that admits them
};
int run_moe_bench(const MoeBenchOptions& options);

}  // namespace w4a16::cli
