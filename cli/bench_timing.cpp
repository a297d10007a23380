// The benchmark's timing method: calls captured into a CUDA graph, a warm-up until the replay time
// settles, timed replays under events, A/B interleaving and the SM clock beside each replay.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "cli/bench_support.h"
#include "cli/cli_support.h"

namespace w4a16::cli {

namespace {

double median_of(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

CapturedCalls::CapturedCalls(const std::function<void(int)>& enqueue, int iterations, cudaStream_t stream)
    : stream_(stream), iterations_(iterations) {
  check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    for (int i = 0; i < iterations; ++i) enqueue(i);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph_);
    if (graph_) cudaGraphDestroy(graph_);
    throw;
  }
  check_cuda(cudaStreamEndCapture(stream, &graph_), "cudaStreamEndCapture");
  if (const cudaError_t e = cudaGraphInstantiate(&exec_, graph_, 0); e != cudaSuccess) {
    cudaGraphDestroy(graph_);
    check_cuda(e, "cudaGraphInstantiate");
  }
  check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop_), "cudaEventCreate");
}

CapturedCalls::~CapturedCalls() {
  if (start_) cudaEventDestroy(start_);
  if (stop_) cudaEventDestroy(stop_);
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
}

// Warm-up: replay until the replay time has settled, at least `min_warm_up_ms` and at most
// max(500 ms, min_warm_up_ms) (plus the replay in progress). Settled means the last three replays
// took within 2% of the three before them (host-timed, so launch jitter counts too). The SM clock
// recovers slowly (a second or more) after a compute-heavy phase, too slowly for that test to see,
// so the caller asks for a long minimum after one (entry 9 of bench/NOTES.md: the first decode
// shape after the ceilings ran 10-18% slow otherwise).
void CapturedCalls::warm_up(double min_warm_up_ms) {
  std::vector<double> warm_up_ms;
  const auto warm_up_begin = std::chrono::steady_clock::now();
  auto settled = [&] {
    const size_t n = warm_up_ms.size();
    if (n < 6) return false;
    const double recent = warm_up_ms[n - 1] + warm_up_ms[n - 2] + warm_up_ms[n - 3];
    const double before = warm_up_ms[n - 4] + warm_up_ms[n - 5] + warm_up_ms[n - 6];
    return std::abs(recent - before) <= 0.02 * before;
  };
  for (;;) {
    const auto replay_begin = std::chrono::steady_clock::now();
    check_cuda(cudaGraphLaunch(exec_, stream_), "cudaGraphLaunch");
    check_cuda(cudaStreamSynchronize(stream_), "warm-up replay");
    const auto now = std::chrono::steady_clock::now();
    warm_up_ms.push_back(std::chrono::duration<double, std::milli>(now - replay_begin).count());
    const double elapsed_ms = std::chrono::duration<double, std::milli>(now - warm_up_begin).count();
    if (elapsed_ms >= std::max(500.0, min_warm_up_ms) || (elapsed_ms >= min_warm_up_ms && settled())) break;
  }
}

double CapturedCalls::timed_replay_us(const std::function<void()>& during) {
  check_cuda(cudaEventRecord(start_, stream_), "cudaEventRecord");
  check_cuda(cudaGraphLaunch(exec_, stream_), "cudaGraphLaunch");
  check_cuda(cudaEventRecord(stop_, stream_), "cudaEventRecord");
  if (during) during();
  check_cuda(cudaEventSynchronize(stop_), "timed replay");
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
  return ms * 1000.0 / iterations_;
}

Timing time_graph(const std::function<void(int)>& enqueue, int iterations, int repeats, cudaStream_t stream,
                  double min_warm_up_ms) {
  CapturedCalls calls(enqueue, iterations, stream);
  calls.warm_up(min_warm_up_ms);
  std::vector<double> samples;
  for (int r = 0; r < repeats; ++r) samples.push_back(calls.timed_replay_us());
  std::sort(samples.begin(), samples.end());
  return {samples[samples.size() / 2], samples.front(), iterations};
}

// NVML, declared here as far as it is used (nvml.h's types: nvmlReturn_t is an int enum with 0 for
// success, nvmlDevice_t an opaque pointer, NVML_CLOCK_SM = 1). The device is found by PCI bus id,
// since NVML's indices need not follow CUDA's (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER).
SmClock::SmClock(int cuda_device) {
  library_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library_ == nullptr) return;
  using Init = int (*)();
  using ByBusId = int (*)(const char*, void**);
  auto init = reinterpret_cast<Init>(dlsym(library_, "nvmlInit_v2"));
  auto by_bus_id = reinterpret_cast<ByBusId>(dlsym(library_, "nvmlDeviceGetHandleByPciBusId_v2"));
  clock_info_ = reinterpret_cast<int (*)(void*, int, unsigned*)>(dlsym(library_, "nvmlDeviceGetClockInfo"));
  char bus_id[32] = {};
  if (init == nullptr || by_bus_id == nullptr || clock_info_ == nullptr || init() != 0 ||
      cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), cuda_device) != cudaSuccess || by_bus_id(bus_id, &device_) != 0) {
    cudaGetLastError();
    device_ = nullptr;
  }
}

SmClock::~SmClock() {
  if (library_ == nullptr) return;
  if (device_ != nullptr) {
    if (auto shutdown = reinterpret_cast<int (*)()>(dlsym(library_, "nvmlShutdown"))) shutdown();
  }
  dlclose(library_);
}

int SmClock::mhz() const {
  unsigned value = 0;
  constexpr int kClockSm = 1;  // NVML_CLOCK_SM
  if (device_ == nullptr || clock_info_(device_, kClockSm, &value) != 0) return -1;
  return int(value);
}

InterleavedTiming time_interleaved(CapturedCalls& a, CapturedCalls& b, int repeats, const SmClock& clock,
                                   double a_min_warm_up_ms) {
  a.warm_up(a_min_warm_up_ms);
  b.warm_up(25);
  a.warm_up(25);  // b's warm-up may have moved the clock: a starts the alternation warm
  std::vector<double> a_us, b_us, a_mhz, b_mhz;
  InterleavedTiming result;
  for (int r = 0; r < repeats; ++r) {
    int mhz = -1;
    a_us.push_back(a.timed_replay_us([&] { mhz = clock.mhz(); }));
    a_mhz.push_back(mhz);
    b_us.push_back(b.timed_replay_us([&] { mhz = clock.mhz(); }));
    b_mhz.push_back(mhz);
    result.ratios.push_back(a_us.back() / b_us.back());
  }
  result.a = {median_of(a_us), *std::min_element(a_us.begin(), a_us.end()), a.iterations()};
  result.b = {median_of(b_us), *std::min_element(b_us.begin(), b_us.end()), b.iterations()};
  result.ratio_median = median_of(result.ratios);
  result.ratio_min = *std::min_element(result.ratios.begin(), result.ratios.end());
  result.ratio_max = *std::max_element(result.ratios.begin(), result.ratios.end());
  result.a_clock_mhz = int(median_of(a_mhz));
  result.b_clock_mhz = int(median_of(b_mhz));
  return result;
}

}  // namespace w4a16::cli
