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

// `iterations` calls of enqueue(i), captured once into a CUDA graph and replayed on `stream`.
class CapturedCalls {
 public:
  CapturedCalls(const std::function<void(int)>& enqueue, int iterations, cudaStream_t stream);
  CapturedCalls(const CapturedCalls&) = delete;
  CapturedCalls& operator=(const CapturedCalls&) = delete;
  ~CapturedCalls();

  // Replays until the replay time has settled, at least min_warm_up_ms (see bench_timing.cpp).
  void warm_up(double min_warm_up_ms);
  // One replay under events: the time per call, in us. `during`, if given, runs on the host while
  // the replay is on the GPU (the clock sample of SmClock).
  double timed_replay_us(const std::function<void()>& during = {});
  int iterations() const { return iterations_; }

 private:
  cudaStream_t stream_;
  int iterations_;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Captures `iterations` calls of enqueue(i) into a graph, replays it until its time settles (at
// least min_warm_up_ms), then times `repeats` replays: the per-call median and minimum.
Timing time_graph(const std::function<void(int)>& enqueue, int iterations, int repeats, cudaStream_t stream,
                  double min_warm_up_ms = 25);

// The SM clock as NVML reports it (libnvidia-ml, opened at run time: the toolkit here has no NVML
// headers, and a machine without the driver's library still runs the benchmark). mhz() is -1 when
// NVML is not there.
class SmClock {
 public:
  explicit SmClock(int cuda_device);
  SmClock(const SmClock&) = delete;
  SmClock& operator=(const SmClock&) = delete;
  ~SmClock();
  bool available() const { return device_ != nullptr; }
  int mhz() const;

 private:
  void* library_ = nullptr;
  void* device_ = nullptr;  // nvmlDevice_t
  int (*clock_info_)(void*, int, unsigned*) = nullptr;
};

// Two captured workloads timed in alternation (A, B, A, B ... one replay each per repeat), so a
// change of the lent GPU's clocks hits both alike; the ratio is taken per repeat.
struct InterleavedTiming {
  Timing a, b;
  double ratio_median = 0, ratio_min = 0, ratio_max = 0;  // of a / b over the repeats
  int a_clock_mhz = -1, b_clock_mhz = -1;                 // median SM clock during each side's replays
  std::vector<double> ratios;
};
InterleavedTiming time_interleaved(CapturedCalls& a, CapturedCalls& b, int repeats, const SmClock& clock,
                                   double a_min_warm_up_ms = 25);

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
  std::vector<std::pair<std::string, std::string>> fp16_algorithm_by_shape;  // DenseBaseline's choice
};
class DenseBaseline;
Ceilings measure_ceilings(DenseBaseline& dense, int sm_count, cudaStream_t stream, int repeats, ElementType element);

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
