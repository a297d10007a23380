// w4a16 bench: times the runner against dense cuBLAS (in the same activation type) over LLM-sized
// shapes, next to ceilings measured in the same run; `--formats` instead times every format side by
// side at the same configs. Method (see README / bench/NOTES.md):
//  - weights (w4a16: packed + scales (+ zeros); cuBLAS: dense) rotate over enough copies that their total
//    exceeds 4x L2, so every call streams its weights from HBM, as in a real forward pass;
//  - `iterations` back-to-back calls are captured in one CUDA graph, so launch gaps don't dominate
//    microsecond shapes; the graph is replayed until its time settles (warm-up), then `repeats`
//    times under events;
//  - the per-call median (and min) over the repeats is reported; inputs are random, never zeros.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <nlohmann/json.hpp>

#include "cli/bench_kernels.h"
#include "cli/bench_support.h"
#include "cli/cli_support.h"
#include "cli/commands.h"
#include "cli/dense_baseline.h"
#include "kernels/dequant_cublas/dequant_cublas.h"
#include "w4a16/runner.h"

#ifndef W4A16_GIT_COMMIT
#define W4A16_GIT_COMMIT "unknown"
#endif

namespace w4a16::cli {

namespace {

struct Shape {
  int m, n, k;
};

struct BenchOptions {
  std::string shapes = "default";
  std::vector<int> m, n, k;
  int group = 128;
  std::vector<std::string> config;
  std::string json;
  int repeats = 9;
  bool profile = false;
  std::string pdl = "auto";
  std::string dtype = "fp16";
  bool zeros = false;
  bool float_zeros = false;
  bool formats = false;  // every format side by side (run_formats)
  bool act_order = false;  // time each config with a random k_permutation, and without it right before
  bool moe = false;        // the grouped GEMM instead (command_bench_moe.cpp)
  std::vector<int> tokens;  // --moe: token counts (default 1, 16, 64, 512, 4096)
};

const std::vector<int> kDefaultM = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
const std::vector<std::pair<int, int>> kDefaultLayers = {{4096, 4096}, {11008, 4096}, {4096, 11008},
                                                         {8192, 8192}, {28672, 8192}, {8192, 28672}};

std::vector<Shape> select_shapes(const BenchOptions& options) {
  std::vector<Shape> shapes;
  if (!options.m.empty() || !options.n.empty() || !options.k.empty()) {
    const std::vector<int> ms = options.m.empty() ? kDefaultM : options.m;
    const std::vector<int> ns = options.n.empty() ? std::vector<int>{4096} : options.n;
    const std::vector<int> ks = options.k.empty() ? std::vector<int>{4096} : options.k;
    for (int n : ns)
      for (int k : ks)
        for (int m : ms) shapes.push_back({m, n, k});
  } else if (options.shapes == "quick") {
    shapes = {{1, 4096, 4096}, {16, 4096, 4096}, {128, 4096, 4096}, {1024, 4096, 4096}, {1, 28672, 8192}};
  } else if (options.shapes == "seed") {
    shapes = {{1, 4096, 4096}, {1, 11008, 4096}, {32, 4096, 4096}, {128, 4096, 4096}};
  } else if (options.formats && options.shapes == "default") {
    // The formats comparison's grid (issue acceptance): decode to prefill on three layers.
    for (const auto& [n, k] : std::vector<std::pair<int, int>>{{4096, 4096}, {28672, 8192}, {8192, 28672}})
      for (int m : {1, 16, 64, 256, 4096}) shapes.push_back({m, n, k});
  } else if (options.shapes == "default") {
    // The LLM grid; it contains the seed's four shapes.
    for (const auto& [n, k] : kDefaultLayers)
      for (int m : kDefaultM) shapes.push_back({m, n, k});
  } else if (options.shapes.find('x') != std::string::npos) {
    // A list of problems, "MxNxK,MxNxK,..." (bench/torch_check.py passes its shapes this way).
    std::stringstream list(options.shapes);
    std::string item;
    while (std::getline(list, item, ',')) {
      Shape s{};
      char rest = 0;
      if (std::sscanf(item.c_str(), "%dx%dx%d%c", &s.m, &s.n, &s.k, &rest) != 3) {
        throw CliError("--shapes " + item + ": a problem is MxNxK (e.g. 512x4096x4096)");
      }
      shapes.push_back(s);
    }
    if (shapes.empty()) throw CliError("--shapes " + options.shapes + ": no problem in the list");
  } else {
    throw CliError("--shapes " + options.shapes + ": must be default, seed, quick or a list of MxNxK");
  }
  return shapes;
}

// Shapes grouped by (n, k), in first-seen order, so the weight copies are made once per layer.
struct Layer {
  int n, k;
  std::vector<int> ms;
};
std::vector<Layer> layers_of(const std::vector<Shape>& shapes) {
  std::vector<Layer> layers;
  for (const Shape& s : shapes) {
    auto it = std::find_if(layers.begin(), layers.end(), [&](const Layer& l) { return l.n == s.n && l.k == s.k; });
    if (it == layers.end()) it = layers.insert(layers.end(), Layer{s.n, s.k, {}});
    it->ms.push_back(s.m);
  }
  return layers;
}

}  // namespace

void write_json(const nlohmann::json& document, const std::string& path) {
  std::ofstream out(path);
  out << document.dump(2) << "\n";
  if (!out) throw CliError("could not write " + path);
  std::printf("wrote %s\n", path.c_str());
}

// Enough calls per replay that one replay lasts ~2 ms (launch and event noise become negligible).
int iterations_for(double expected_us) { return std::clamp(int(2000.0 / std::max(expected_us, 1.0)), 10, 300); }

// Copies of a `bytes`-sized buffer needed so that their total exceeds 4x L2 (at least 2).
int copies_for(size_t bytes, size_t l2_bytes) {
  return std::max<int>(2, int((4 * l2_bytes) / std::max<size_t>(bytes, 1)) + 1);
}

Ceilings measure_ceilings(DenseBaseline& dense, int sm_count, cudaStream_t stream, int repeats, ElementType element) {
  Ceilings ceilings;
  {
    const size_t bytes = size_t(2) << 30;  // 2 GiB, 40x L2
    DeviceBuffer buffer(bytes), sink(sizeof(unsigned));
    fill_random_bytes(buffer.get(), bytes, 1);
    check_cuda(cudaDeviceSynchronize(), "fill");  // fills run on the legacy stream, timing on `stream`
    const Timing t = time_graph(
        [&](int) { launch_read_probe(buffer.get(), bytes, sink.get<unsigned>(), sm_count, stream); }, 5, repeats,
        stream);
    ceilings.hbm_read_gbps = bytes / (t.median_us * 1e3);
  }
  // The tensor-core rate: the best of cublasGemmEx and cuBLASLt's candidates (DenseBaseline) at
  // two square sizes, the larger rate kept.
  for (int size : {4096, 8192}) {
    const size_t elements = size_t(size) * size;
    DeviceBuffer a(elements * 2), b(elements * 2), c(elements * 2);
    fill_random_elements(element, a.get(), elements, -1, 1, 2);
    fill_random_elements(element, b.get(), elements, -1, 1, 3);
    check_cuda(cudaDeviceSynchronize(), "fill");
    const int iterations = size == 8192 ? 10 : 40;
    dense.choose(element, size, size, size, a.get(), {b.get()}, c.get(), stream, iterations, 3);
    const Timing t = time_graph([&](int) { dense.enqueue(a.get(), b.get(), c.get(), stream); }, iterations, repeats,
                                stream);
    const double tflops = 2.0 * size * size * double(size) / (t.median_us * 1e6);
    ceilings.fp16_by_shape.emplace_back(std::to_string(size) + "^3", tflops);
    ceilings.fp16_algorithm_by_shape.emplace_back(std::to_string(size) + "^3", dense.name());
    ceilings.fp16_tflops = std::max(ceilings.fp16_tflops, tflops);
  }
  return ceilings;
}

// The commit baked in at configure time, or W4A16_GIT_COMMIT from the environment when the build
// was made from a copy without .git (the offline GPU machine).
std::string git_commit() {
  const char* from_environment = std::getenv("W4A16_GIT_COMMIT");
  if (from_environment != nullptr && *from_environment != '\0') return from_environment;
  return W4A16_GIT_COMMIT;
}

nlohmann::json environment_json(const cudaDeviceProp& properties, int device) {
  int runtime = 0, driver = 0, clock_khz = 0, memory_clock_khz = 0, cublas_version = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device);
  cudaDeviceGetAttribute(&memory_clock_khz, cudaDevAttrMemoryClockRate, device);
  cudaGetLastError();
  cublasGetProperty(MAJOR_VERSION, &cublas_version);
  int cublas_minor = 0;
  cublasGetProperty(MINOR_VERSION, &cublas_minor);
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"device", properties.name},
          {"sm", properties.major * 10 + properties.minor},
          {"sm_count", properties.multiProcessorCount},
          {"l2_bytes", properties.l2CacheSize},
          {"memory_bytes", properties.totalGlobalMem},
          {"max_sm_clock_mhz", clock_khz / 1000},
          {"max_memory_clock_mhz", memory_clock_khz / 1000},
          {"cuda_runtime", runtime},
          {"cuda_driver", driver},
          {"cublas", std::to_string(cublas_version) + "." + std::to_string(cublas_minor)},
          {"git_commit", git_commit()},
          {"date", date}};
}

namespace {

const char* programmatic_launch_name(GemmRunner::ProgrammaticLaunch mode) {
  switch (mode) {
    case GemmRunner::ProgrammaticLaunch::kOff: return "off";
    case GemmRunner::ProgrammaticLaunch::kWhereItHelps: return "auto";
    case GemmRunner::ProgrammaticLaunch::kAlways: return "always";
  }
  return "?";
}

int run_formats(const BenchOptions& options, GemmRunner& runner, const cudaDeviceProp& properties, int device,
                cudaStream_t stream);

// Every argument, before the GPU is touched (and before the ceilings take their seconds).
void check_bench_options(const BenchOptions& options) {
  for (const Shape& s : select_shapes(options)) check_problem_options(s.m, s.n, s.k, options.group);
  for (const std::string& name : options.config) {
    KernelConfig config;
    if (!parse_kernel_config(name, &config)) throw CliError("--config " + name + ": not a config name (w4a16 info lists them)");
  }
  if (options.formats && !options.config.empty()) throw CliError("--formats times the default configs; it takes no --config");
  if (options.formats && (options.zeros || options.float_zeros || options.dtype != "fp16")) {
    throw CliError("--formats times every format; it takes no --dtype, --zeros or --float-zeros");
  }
  if (options.zeros && options.float_zeros) throw CliError("--zeros and --float-zeros: choose one");
  if (options.formats && options.act_order) throw CliError("--formats takes no --act-order");
}

int run_bench(const BenchOptions& options) {
  if (options.moe) {
    if (options.formats || options.act_order || options.profile || !options.m.empty() || !options.n.empty() ||
        !options.k.empty() || options.shapes != "default") {
      throw CliError("--moe times its own models; it takes no --formats, --act-order, --profile, --shapes, --m/--n/--k");
    }
    for (const std::string& name : options.config) {
      KernelConfig config;
      if (!parse_kernel_config(name, &config)) throw CliError("--config " + name + ": not a config name (w4a16 info lists them)");
    }
    if (options.zeros && options.float_zeros) throw CliError("--zeros and --float-zeros: choose one");
    MoeBenchOptions moe;
    moe.dtype = options.dtype;
    moe.zeros = options.zeros;
    moe.float_zeros = options.float_zeros;
    moe.group = options.group;
    moe.repeats = options.repeats;
    moe.json = options.json;
    if (!options.tokens.empty()) moe.tokens = options.tokens;
    for (const std::string& name : options.config) {
      moe.configs.emplace_back();
      parse_kernel_config(name, &moe.configs.back());
    }
    return run_moe_bench(moe);
  }
  if (!options.tokens.empty()) throw CliError("--tokens goes with --moe");
  check_bench_options(options);
  if (!require_gpu("bench")) return 2;
  const auto wall_begin = std::chrono::steady_clock::now();
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp properties;
  check_cuda(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
  GemmRunner runner;
  check_status(runner.status(), "runner");
  runner.set_programmatic_launch(options.pdl == "off"      ? GemmRunner::ProgrammaticLaunch::kOff
                                 : options.pdl == "always" ? GemmRunner::ProgrammaticLaunch::kAlways
                                                           : GemmRunner::ProgrammaticLaunch::kWhereItHelps);
  std::vector<KernelConfig> forced;
  for (const std::string& name : options.config) {
    KernelConfig config;
    if (!parse_kernel_config(name, &config)) throw CliError("unknown config name '" + name + "' (see w4a16 info)");
    forced.push_back(config);
  }
  const std::vector<Shape> shapes = select_shapes(options);
  const Format format{parse_element_type(options.dtype), options.float_zeros ? QuantOp::kScaleAndFloatZeros
                                                         : options.zeros     ? QuantOp::kScaleAndZeros
                                                                             : QuantOp::kScaleOnly};
  const ElementType element = format.element;
  const bool with_zeros = has_zeros(format.quant);

  cudaStream_t stream;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (options.formats) {  // (check_bench_options has ruled out --config with it)
    const int status = run_formats(options, runner, properties, device, stream);
    cudaStreamDestroy(stream);
    return status;
  }
  DenseBaseline dense_baseline;
  const SmClock clock(device);
  const Ceilings ceilings =
      measure_ceilings(dense_baseline, properties.multiProcessorCount, stream, options.repeats, element);
  std::printf("w4a16 bench  device: %s (sm_%d%d, %d SMs, L2 %.0f MiB)  commit %s\n", properties.name,
              properties.major, properties.minor, properties.multiProcessorCount, properties.l2CacheSize / 1048576.0,
              git_commit().c_str());
  std::printf("ceilings     HBM read %.0f GB/s (2 GiB streaming read)   %s tensor core %.0f TFLOP/s (best cuBLAS",
              ceilings.hbm_read_gbps, to_string(element), ceilings.fp16_tflops);
  for (const auto& [name, tflops] : ceilings.fp16_by_shape) std::printf(" %s: %.0f", name.c_str(), tflops);
  std::printf(")\n");
  std::printf("method       format %s, group %d, weights rotated over >4x L2, CUDA graph of back-to-back calls, "
              "median of %d, programmatic dependent launch: %s\n\n",
              format_name(format), options.group, options.repeats, programmatic_launch_name(runner.programmatic_launch()));
  std::printf("%5s %6s %6s  %-24s %9s %9s %7s %7s %9s %6s %8s %6s %9s %6s %7s %11s  %s\n", "m", "n", "k", "config",
              "w4a16 us", "min us", "TFLOP/s", "GB/s", "roof us", "eff%", "floor us", "flr%", "cuBLAS us", "eff%",
              "speedup", "ratio range", "cuBLAS algorithm");

  nlohmann::json results = nlohmann::json::array();
  const size_t l2 = size_t(properties.l2CacheSize);
  const double hbm_bytes_per_us = ceilings.hbm_read_gbps * 1e3;
  const double flops_per_us = ceilings.fp16_tflops * 1e6;
  DeviceBuffer workspace;

  for (const Layer& layer : layers_of(shapes)) {
    const int n = layer.n, k = layer.k;
    const std::vector<int>& ms = layer.ms;
    const int max_m = *std::max_element(ms.begin(), ms.end());
    const size_t packed_bytes = size_t(n) * k / 2;
    // Scales and zero points: one group row each (zero points only with --zeros / --float-zeros).
    const size_t scale_bytes = size_t(k / options.group) * n * 2;
    const size_t zero_bytes = with_zeros ? scale_bytes : 0;
    const size_t dense_bytes = size_t(n) * k * 2;
    const int w4_copies = copies_for(packed_bytes + scale_bytes + zero_bytes, l2);
    const int dense_copies = copies_for(dense_bytes, l2);
    // Each copy's scales and zero points share one allocation (zero points right after the
    // scales), so the read floor reads both as one range.
    std::vector<DeviceBuffer> packed, groups, dense;
    auto scales_of = [&](int i) { return groups[i % w4_copies].get(); };
    auto zeros_of = [&](int i) { return with_zeros ? groups[i % w4_copies].get<uint8_t>() + scale_bytes : nullptr; };
    for (int i = 0; i < w4_copies; ++i) {
      packed.emplace_back(packed_bytes);
      groups.emplace_back(scale_bytes + zero_bytes);
      fill_random_bytes(packed.back().get(), packed_bytes, 100 + i);
      fill_random_elements(element, scales_of(i), scale_bytes / 2, 0.002f, 0.02f, 200 + i);
      if (with_zeros) fill_random_zero_points(element, zeros_of(i), zero_bytes / 2, options.float_zeros, 500 + i);
    }
    for (int i = 0; i < dense_copies; ++i) {
      dense.emplace_back(dense_bytes);
      fill_random_elements(element, dense.back().get(), dense_bytes / 2, -0.1f, 0.1f, 300 + i);
    }
    DeviceBuffer a(size_t(max_m) * k * 2), c(size_t(max_m) * n * 2);
    fill_random_elements(element, a.get(), size_t(max_m) * k, -1, 1, 400);
    // --act-order: one random permutation of k, as a GPTQ desc_act checkpoint's import makes.
    DeviceBuffer permutation(options.act_order ? size_t(k) * 4 : 0);
    if (options.act_order) {
      std::vector<int32_t> host(k);
      std::iota(host.begin(), host.end(), 0);
      std::shuffle(host.begin(), host.end(), std::mt19937(600));
      check_cuda(cudaMemcpy(permutation.get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice), "upload");
    }
    check_cuda(cudaDeviceSynchronize(), "fill");

    DeviceBuffer sink(sizeof(unsigned));
    Timing read_floor;
    for (size_t shape_index = 0; shape_index < ms.size(); ++shape_index) {
      const int m = ms[shape_index];
      GemmArguments args;
      args.a = a.get();
      args.c = c.get();
      args.m = m;
      args.n = n;
      args.k = k;
      args.group_size = options.group;
      args.element = element;
      args.packed_weights = packed[0].get();
      args.scales = scales_of(0);
      args.zeros = zeros_of(0);
      args.float_zeros = format.quant == QuantOp::kScaleAndFloatZeros;

      // The configs to time at this shape: the forced ones, or the default (or profiled) one.
      std::vector<KernelConfig> configs = forced;
      if (configs.empty()) configs.push_back(runner.default_config(m, n, k, options.group, format));
      if (options.profile && forced.empty()) {
        // With --act-order the profiler times the permuted call (the gather included), the one
        // the table reports.
        args.k_permutation = options.act_order ? permutation.get<int32_t>() : nullptr;
        // Workspace for the profiler: every config up to 1 GiB of workspace.
        size_t bytes = 0;
        for (const KernelConfig& candidate : runner.configs()) {
          const size_t need = runner.workspace_bytes(args, candidate);
          if (need <= (size_t(1) << 30)) bytes = std::max(bytes, need);
        }
        if (workspace.bytes() < bytes) workspace = DeviceBuffer(bytes);
        ProfileResult profile;
        check_status(runner.profile(args, workspace.get(), workspace.bytes(), stream, &profile, 10, 3), "profile");
        configs = {profile.best};
        // The runner-up configs too (a '#' line, so the table stays machine-readable): how close
        // the field is tells whether the heuristic's choice matters at this shape.
        std::vector<std::pair<KernelConfig, float>> ranked = profile.timings;
        std::sort(ranked.begin(), ranked.end(), [](const auto& x, const auto& y) { return x.second < y.second; });
        std::printf("# profile %dx%dx%d:", m, n, k);
        for (size_t i = 0; i < std::min<size_t>(ranked.size(), 6); ++i) {
          std::printf(" %s %.1f", ranked[i].first.name().c_str(), ranked[i].second);
        }
        std::printf("\n");
      }
      const double bytes = double(packed_bytes + scale_bytes + zero_bytes) + 2.0 * m * k + 2.0 * m * n;
      const double flops = 2.0 * m * n * double(k);
      const double roofline_us = std::max(bytes / hbm_bytes_per_us, flops / flops_per_us);
      const double dense_bytes_total = double(dense_bytes) + 2.0 * m * k + 2.0 * m * n;
      const double cublas_roofline_us = std::max(dense_bytes_total / hbm_bytes_per_us, flops / flops_per_us);

      // Our configs alone first (the table's w4a16 column), then the dense yardstick's choice,
      // then each config in alternation with it (the speed-up), then the read floor. The order
      // matters: a shape's first timing follows the previous shape's cuBLAS run, and after a
      // compute-heavy one the SM clock takes a while to come back (time_graph); timing cuBLAS
      // first put every w4a16 timing of m >= 256 right behind a dense GEMM and cost them 5-15%
      // (bench/NOTES.md, entry 17). The interleaved ratio is immune to that: both sides of each
      // repeat see the same clock.
      std::vector<Timing> w4_timings, plain_timings;
      for (size_t c = 0; c < configs.size(); ++c) {
        const KernelConfig& config = configs[c];
        // With --act-order: the same config without the permutation first (the cost's baseline,
        // in the same clock state), then with it, which the table reports.
        for (const bool permuted : options.act_order ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
          args.k_permutation = permuted ? permutation.get<int32_t>() : nullptr;
          const size_t need = runner.workspace_bytes(args, config);
          if (workspace.bytes() < need) workspace = DeviceBuffer(need);
          check_status(runner.check(args, config, workspace.get(), workspace.bytes()), "bench arguments");
          (options.act_order && !permuted ? plain_timings : w4_timings).push_back(time_graph(
              [&](int i) {
                args.packed_weights = packed[i % w4_copies].get();
                args.scales = scales_of(i);
                args.zeros = zeros_of(i);
                check_status(runner.gemm(args, config, workspace.get(), workspace.bytes(), stream), "gemm");
              },
              std::max(iterations_for(roofline_us), w4_copies), options.repeats, stream,
              // The first shape of a layer follows the ceilings or the previous layer's largest m,
              // both compute-heavy: give the clock time to recover (see time_graph). One second was
              // not enough after the previous layer's m = 4096: the first decode shape ran 1.4-2.6%
              // slower than the same kernel at m = 2 right after it (H100, 1x28672x8192 46.8 vs
              // 45.6 us); 1 s vs 3 s: 46.5 vs 45.8 us, 1x8192x28672 45.1 vs 44.6 (bench/NOTES.md,
              // entry 22).
              shape_index == 0 && c == 0 && !permuted ? kSettleAfterComputeMs : 25));
        }
      }
      // The dense yardstick at this shape (DenseBaseline): cublasGemmEx and cuBLASLt's candidates,
      // each timed briefly, the fastest kept; then every config against it in alternation, so the
      // speed-up is a ratio taken replay by replay under the same clocks.
      std::vector<const void*> dense_weights;
      for (const DeviceBuffer& copy : dense) dense_weights.push_back(copy.get());
      const int dense_iterations = std::max(iterations_for(cublas_roofline_us), dense_copies);
      dense_baseline.choose(element, m, n, k, a.get(), dense_weights, c.get(), stream, dense_iterations, 3);
      std::vector<InterleavedTiming> against_dense;
      for (size_t c_index = 0; c_index < configs.size(); ++c_index) {
        const KernelConfig& config = configs[c_index];
        args.k_permutation = options.act_order ? permutation.get<int32_t>() : nullptr;
        CapturedCalls w4_calls(
            [&](int i) {
              args.packed_weights = packed[i % w4_copies].get();
              args.scales = scales_of(i);
              args.zeros = zeros_of(i);
              check_status(runner.gemm(args, config, workspace.get(), workspace.bytes(), stream), "gemm");
            },
            w4_timings[c_index].iterations, stream);
        CapturedCalls dense_calls(
            [&](int i) { dense_baseline.enqueue(a.get(), dense_weights[size_t(i) % dense_weights.size()], c.get(), stream); },
            dense_iterations, stream);
        against_dense.push_back(time_interleaved(w4_calls, dense_calls, options.repeats, clock));
      }

      // The read floor (see launch_read_floor): the same weight bytes, the same rotation and
      // harness, no math. Measured once per layer: it does not depend on m.
      if (shape_index == 0) {
        read_floor = time_graph(
            [&](int i) {
              launch_read_floor(packed[i % w4_copies].get(), packed_bytes, scales_of(i), scale_bytes + zero_bytes,
                                sink.get<unsigned>(), stream);
            },
            std::max(iterations_for(roofline_us), w4_copies), options.repeats, stream);
      }

      for (size_t c = 0; c < configs.size(); ++c) {
        const KernelConfig& config = configs[c];
        const Timing& w4 = w4_timings[c];
        const InterleavedTiming& versus = against_dense[c];
        const Timing& dense_timing = versus.b;
        const double efficiency = roofline_us / w4.median_us;
        // The speed-up is the interleaved one: cuBLAS time / w4a16 time, replay by replay.
        const double speedup = 1.0 / versus.ratio_median;
        std::printf("%5d %6d %6d  %-24s %9.1f %9.1f %7.1f %7.0f %9.1f %6.1f %8.1f %6.1f %9.1f %6.1f %6.2fx %5.2f-%5.2f  %s\n",
                    m, n, k, config.name().c_str(), w4.median_us, w4.min_us, flops / (w4.median_us * 1e6),
                    bytes / (w4.median_us * 1e3), roofline_us, 100 * efficiency, read_floor.median_us,
                    100 * read_floor.median_us / w4.median_us, dense_timing.median_us,
                    100 * cublas_roofline_us / dense_timing.median_us, speedup, 1.0 / versus.ratio_max,
                    1.0 / versus.ratio_min, dense_baseline.name().c_str());
        if (options.act_order) {
          std::printf("# act-order %dx%dx%d %s: without the permutation %.1f us, with it %.1f us (%+.1f%%)\n", m, n,
                      k, config.name().c_str(), plain_timings[c].median_us, w4.median_us,
                      100.0 * (w4.median_us / plain_timings[c].median_us - 1.0));
        }
        std::fflush(stdout);
        results.push_back({{"m", m},
                           {"n", n},
                           {"k", k},
                           {"group_size", options.group},
                           {"format", format_name(format)},
                           {"config", config.name()},
                           {"config_source", !forced.empty() ? "forced" : options.profile ? "profiled" : "default"},
                           {"w4a16_us", w4.median_us},
                           {"w4a16_min_us", w4.min_us},
                           {"w4a16_iterations_per_replay", w4.iterations},
                           {"w4a16_weight_copies", w4_copies},
                           {"tflops", flops / (w4.median_us * 1e6)},
                           {"effective_gbps", bytes / (w4.median_us * 1e3)},
                           {"bytes", bytes},
                           {"flops", flops},
                           {"roofline_us", roofline_us},
                           {"efficiency", efficiency},
                           {"read_floor_us", read_floor.median_us},
                           {"read_floor_fraction", read_floor.median_us / w4.median_us},
                           {"cublas_us", dense_timing.median_us},
                           {"cublas_min_us", dense_timing.min_us},
                           {"cublas_weight_copies", dense_copies},
                           {"cublas_roofline_us", cublas_roofline_us},
                           {"cublas_efficiency", cublas_roofline_us / dense_timing.median_us},
                           {"speedup_vs_cublas", speedup},
                           {"cublas_algorithm", dense_baseline.name()},
                           {"cublas_candidates", dense_baseline.candidates_json()},
                           {"cublas_gemmex_default_us", dense_baseline.gemmex_us()},
                           {"cublas_lt_first_choice_us", dense_baseline.lt_first_us()},
                           {"interleaved",
                            {{"w4a16_us", versus.a.median_us},
                             {"cublas_us", versus.b.median_us},
                             {"ratio_median", versus.ratio_median},
                             {"ratio_min", versus.ratio_min},
                             {"ratio_max", versus.ratio_max},
                             {"ratios", versus.ratios},
                             {"w4a16_sm_clock_mhz", versus.a_clock_mhz},
                             {"cublas_sm_clock_mhz", versus.b_clock_mhz}}}});
        if (options.act_order) {
          results.back()["act_order"] = true;
          results.back()["without_act_order_us"] = plain_timings[c].median_us;
        }
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_begin).count();
  std::printf("\n%zu shapes in %.0f s\n", results.size(), seconds);

  if (!options.json.empty()) {
    nlohmann::json document = {
        {"environment", environment_json(properties, device)},
        {"ceilings",
         {{"hbm_read_gbps", ceilings.hbm_read_gbps}, {"fp16_tflops", ceilings.fp16_tflops}, {"fp16_by_shape", ceilings.fp16_by_shape},
          {"fp16_algorithm_by_shape", ceilings.fp16_algorithm_by_shape}}},
        {"method",
         {{"group_size", options.group},
          {"format", format_name(format)},
          {"repeats", options.repeats},
          {"programmatic_dependent_launch", programmatic_launch_name(runner.programmatic_launch())},
          {"statistic", "median per call over repeats of a CUDA graph of back-to-back calls"},
          {"weights_rotated_over_bytes_at_least", 4 * l2},
          {"roofline", "max(bytes / hbm_read, 2mnk / fp16_rate), bytes = packed weights + scales + A + C"},
          {"read_floor", "one kernel reading the packed weights and scales once, no math, same rotation and graph"},
          {"cublas",
           "per shape the fastest of cublasGemmEx (CUBLAS_GEMM_DEFAULT) and cuBLASLt's first 8 heuristic "
           "candidates (workspace up to 256 MiB), each timed over 3 replays; cublas_us and speedup_vs_cublas come "
           "from that algorithm timed in alternation with w4a16 (one replay each per repeat), the speed-up being "
           "the median of the per-repeat ratios"},
          {"sm_clock", clock.available() ? "NVML, sampled during each interleaved replay" : "NVML not available"}}},
        {"wall_seconds", seconds},
        {"results", results}};
    write_json(document, options.json);
  }
  cudaStreamDestroy(stream);
  return 0;
}

// `w4a16 bench --formats`: every format at the configs fp16 scale-only uses by default (the
// heuristics do not look at the format), timed side by side. Each layer's packed weights are shared
// by all formats (the packed layout does not depend on the format); each format has its own scales
// (and zero points) and activations in its type. The formats are timed in interleaved rounds
// (fp16, fp16+zeros, fp16+float-zeros, bf16, ..., then again), and each one's median over rounds is reported,
// so a drift of the clocks during the run affects them alike.
int run_formats(const BenchOptions& options, GemmRunner& runner, const cudaDeviceProp& properties, int device,
                cudaStream_t stream) {
  const auto wall_begin = std::chrono::steady_clock::now();
  const std::vector<Shape> shapes = select_shapes(options);
  constexpr int kRounds = 3;
  std::printf("w4a16 bench --formats  device: %s (sm_%d%d, %d SMs)  commit %s\n", properties.name, properties.major,
              properties.minor, properties.multiProcessorCount, git_commit().c_str());
  std::printf("method       group %d, each format at fp16's default config, weights rotated over >4x L2, CUDA graph "
              "of back-to-back calls, median of %d, %d interleaved rounds (median)\n\n",
              options.group, options.repeats, kRounds);
  std::printf("%5s %6s %6s  %-24s", "m", "n", "k", "config");
  for (const Format& format : kAllFormats) std::printf(" %11s us", format_name(format));
  for (size_t f = 1; f < std::size(kAllFormats); ++f) std::printf(" %10s/fp16", format_name(kAllFormats[f]));
  std::printf("\n");

  nlohmann::json results = nlohmann::json::array();
  const size_t l2 = size_t(properties.l2CacheSize);
  DeviceBuffer workspace;
  double worst_ratio = 0.0;
  for (const Layer& layer : layers_of(shapes)) {
    const int n = layer.n, k = layer.k;
    const std::vector<int>& ms = layer.ms;
    const int max_m = *std::max_element(ms.begin(), ms.end());
    const size_t packed_bytes = size_t(n) * k / 2;
    const size_t group_bytes = size_t(k / options.group) * n * 2;
    const int copies = copies_for(packed_bytes + 2 * group_bytes, l2);
    // Per copy: packed weights, and per element type scales followed by zero points.
    std::vector<DeviceBuffer> packed;
    std::vector<DeviceBuffer> groups[2];
    DeviceBuffer a[2], c(size_t(max_m) * n * 2);
    for (int i = 0; i < copies; ++i) {
      packed.emplace_back(packed_bytes);
      fill_random_bytes(packed.back().get(), packed_bytes, 100 + i);
    }
    for (int e = 0; e < 2; ++e) {
      const ElementType element = e == 0 ? ElementType::kFloat16 : ElementType::kBFloat16;
      for (int i = 0; i < copies; ++i) {
        groups[e].emplace_back(2 * group_bytes);
        fill_random_elements(element, groups[e].back().get(), group_bytes / 2, 0.002f, 0.02f, 200 + i);
        // Whole-number zero points (every format but the float-zeros ones reads them as such;
        // the float ones take them too, and their kernels do not depend on the values).
        fill_random_zero_points(element, groups[e].back().get<uint8_t>() + group_bytes, group_bytes / 2, false, 500 + i);
      }
      a[e] = DeviceBuffer(size_t(max_m) * k * 2);
      fill_random_elements(element, a[e].get(), size_t(max_m) * k, -1, 1, 400);
    }
    check_cuda(cudaDeviceSynchronize(), "fill");

    for (size_t shape_index = 0; shape_index < ms.size(); ++shape_index) {
      const int m = ms[shape_index];
      const KernelConfig config = runner.default_config(m, n, k, options.group);
      const size_t need = runner.workspace_bytes(m, n, k, config);
      if (workspace.bytes() < need) workspace = DeviceBuffer(need);
      const double expected_us =
          std::max((packed_bytes + 2.0 * group_bytes) / 4e6, 2.0 * m * n * double(k) / 7e8);  // ~H200 rates
      std::vector<double> samples[std::size(kAllFormats)];
      for (int round = 0; round < kRounds; ++round) {
        for (size_t f = 0; f < std::size(kAllFormats); ++f) {
          const Format format = kAllFormats[f];
          const int e = format.element == ElementType::kBFloat16 ? 1 : 0;
          const bool zeros = has_zeros(format.quant);
          GemmArguments args;
          args.a = a[e].get();
          args.c = c.get();
          args.m = m;
          args.n = n;
          args.k = k;
          args.group_size = options.group;
          args.element = format.element;
          args.packed_weights = packed[0].get();
          args.scales = groups[e][0].get();
          args.zeros = zeros ? groups[e][0].get<uint8_t>() + group_bytes : nullptr;
          args.float_zeros = format.quant == QuantOp::kScaleAndFloatZeros;
          check_status(runner.check(args, config, workspace.get(), workspace.bytes()), "bench arguments");
          const Timing t = time_graph(
              [&](int i) {
                args.packed_weights = packed[i % copies].get();
                args.scales = groups[e][i % copies].get();
                if (zeros) args.zeros = groups[e][i % copies].get<uint8_t>() + group_bytes;
                check_status(runner.gemm(args, config, workspace.get(), workspace.bytes(), stream), "gemm");
              },
              std::max(iterations_for(expected_us), copies), options.repeats, stream,
              shape_index == 0 && round == 0 && f == 0 ? kSettleAfterComputeMs : 25);
          samples[f].push_back(t.median_us);
        }
      }
      double median[std::size(kAllFormats)];
      for (size_t f = 0; f < std::size(kAllFormats); ++f) {
        std::sort(samples[f].begin(), samples[f].end());
        median[f] = samples[f][samples[f].size() / 2];
      }
      std::printf("%5d %6d %6d  %-24s", m, n, k, config.name().c_str());
      for (double us : median) std::printf(" %14.1f", us);
      nlohmann::json entry = {{"m", m}, {"n", n}, {"k", k}, {"group_size", options.group}, {"config", config.name()}};
      nlohmann::json by_format = nlohmann::json::object();
      for (size_t f = 0; f < std::size(kAllFormats); ++f) {
        by_format[format_name(kAllFormats[f])] = {{"us", median[f]}, {"rounds_us", samples[f]}};
        if (f == 0) continue;
        const double ratio = median[f] / median[0];
        worst_ratio = std::max(worst_ratio, ratio);
        std::printf(" %15.3f", ratio);
      }
      std::printf("\n");
      std::fflush(stdout);
      entry["formats"] = by_format;
      results.push_back(entry);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_begin).count();
  std::printf("\n%zu shapes in %.0f s; slowest format relative to fp16: %.3f\n", results.size(), seconds, worst_ratio);
  if (!options.json.empty()) {
    nlohmann::json document = {
        {"environment", environment_json(properties, device)},
        {"method",
         {{"group_size", options.group},
          {"repeats", options.repeats},
          {"rounds", kRounds},
          {"programmatic_dependent_launch", programmatic_launch_name(runner.programmatic_launch())},
          {"statistic", "median over interleaved rounds of the median per call over repeats of a CUDA graph"},
          {"config", "the default config of fp16 scale-only, for every format"}}},
        {"wall_seconds", seconds},
        {"results", results}};
    write_json(document, options.json);
  }
  return 0;
}

}  // namespace

void register_bench(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<BenchOptions>();
  CLI::App* command = app.add_subcommand("bench", "Time w4a16 against dense cuBLAS and the roofline");
  command->add_option("--shapes", options->shapes,
                      "default (LLM grid), seed, quick (a few shapes, seconds), or problems MxNxK,MxNxK,...");
  command->add_option("--m", options->m, "m values (comma separated); with --n/--k replaces --shapes")->delimiter(',');
  command->add_option("--n", options->n, "n values (comma separated)")->delimiter(',');
  command->add_option("--k", options->k, "k values (comma separated)")->delimiter(',');
  command->add_option("--group", options->group, "group size");
  command->add_option("--config", options->config, "time these kernel configs (comma separated, see info) instead of the default")
      ->delimiter(',');
  command->add_flag("--profile", options->profile, "profile every config per shape and time the fastest");
  command->add_option("--pdl", options->pdl,
                      "programmatic dependent launch on sm_90: auto (where it helps, see GemmRunner), always, off")
      ->check(CLI::IsMember({"auto", "always", "off"}));
  command->add_option("--dtype", options->dtype, "activation type: fp16 or bf16")->check(CLI::IsMember({"fp16", "bf16"}));
  command->add_flag("--zeros", options->zeros, "weights with whole-number zero points (w = s * (q - z), GPTQ/AWQ)");
  command->add_flag("--float-zeros", options->float_zeros, "weights with fractional zero points (HQQ-style)");
  command->add_flag("--act-order", options->act_order,
                    "weights in act-order (a random k_permutation); also times each config without it, right before");
  command->add_flag("--formats", options->formats,
                    "time every format (fp16, bf16, with and without zero points) side by side at fp16's default "
                    "configs; its default shapes are m 1..4096 on 4096x4096, 28672x8192, 8192x28672");
  command->add_flag("--moe", options->moe,
                    "the grouped (mixture-of-experts) GEMM: Mixtral-8x7B and a Qwen3-MoE-like layer set at "
                    "1..4096 tokens, random and skewed routing, against a per-expert loop and cuBLAS grouped GEMM");
  command->add_option("--tokens", options->tokens, "--moe: token counts (comma separated)")->delimiter(',');
  command->add_option("--json", options->json, "write every figure and the environment to this file");
  command->add_option("--repeats", options->repeats, "timed graph replays per measurement (median)")
      ->check(CLI::Range(3, 1000));
  command->callback([options, exit_code] { *exit_code = run_bench(*options); });
}

}  // namespace w4a16::cli
