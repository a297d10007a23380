// The runner: validation, the config table, dispatch to kernel families, and the profiler.
#include "w4a16/runner.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <cublas_v2.h>

#include "kernels/act_order/gather_columns.h"
#include "kernels/dequant_cublas/dense_gemm.h"
#include "kernels/dequant_cublas/dequant_cublas.h"
#include "kernels/fused/params.h"
#include "runner/compiled_config.h"
#include "runner/config_hash.h"
#include "runner/heuristics.h"
#include "runner/tuning.h"
#include "runner/validate.h"
#include "w4a16/quantize.h"

namespace w4a16 {

struct GemmRunner::Impl {
  cublasHandle_t cublas = nullptr;
  // cuBLAS's handle carries a stream and a workspace between calls (cublasSetStream,
  // cublasSetWorkspace, then cublasGemmEx), so concurrent gemm() calls take turns on it. Held only
  // while enqueuing: microseconds, no device wait.
  std::mutex cublas_mutex;
  // The dequant_cublas_lt<r> configs: cuBLASLt's descriptors and heuristic candidates per
  // (element, m, n, k), made on a shape's first use (a host-side heuristic query, once per
  // distinct shape: a server whose m varies makes one per m it sees) and kept for the runner's
  // lifetime, failures too; a call then only looks its shape up. Null handle: no cuBLASLt, no
  // such configs.
  struct LtShape {
    std::unique_ptr<dequant_cublas::DenseGemm> gemm;  // null when the query failed
    Status status;
  };
  cublasLtHandle_t lt = nullptr;
  std::mutex lt_mutex;
  std::map<std::tuple<int, int, int, int>, LtShape> lt_gemms;
  int gather_arch = 0;           // act_order::compiled_arch(): programmatic launch needs >= 90
  int gather_shared_limit = 0;   // act_order::prepare(): shared memory for staging a row of A
  // Which compiled kernel serves each fused config in each format, and the virtual arch its body
  // was compiled from (programmatic launch is only safe where griddepcontrol.wait is compiled in:
  // >= 90).
  struct FusedEntry {
    KernelConfig config;
    Format format;
    fused::CompiledKernel kernel;
    int compiled_arch;
    int resident_blocks_per_sm;
  };
  std::vector<FusedEntry> fused_kernels;
  // Per-call lookups in O(1) (config_hash.h), built once the constructor has filled
  // fused_kernels and the runner's configs_: the first entry of each (config, format), as the
  // scan they replace found it, and configs_ as a set.
  std::unordered_map<std::pair<KernelConfig, Format>, size_t, ConfigFormatHash> fused_index;
  std::unordered_set<KernelConfig, KernelConfigHash> listed;

  void build_index(const std::vector<KernelConfig>& configs) {
    for (size_t i = 0; i < fused_kernels.size(); ++i) {
      fused_index.emplace(std::make_pair(fused_kernels[i].config, fused_kernels[i].format), i);
    }
    listed.insert(configs.begin(), configs.end());
  }

  ~Impl() {
    lt_gemms.clear();
    if (lt != nullptr) cublasLtDestroy(lt);
    if (cublas != nullptr) cublasDestroy(cublas);
  }

  // The cuBLASLt problem of one call shape (see lt_gemms); the pointer stays valid while the
  // runner lives.
  Status lt_gemm(ElementType element, int m, int n, int k, const dequant_cublas::DenseGemm** out) {
    const std::lock_guard<std::mutex> lock(lt_mutex);
    const auto key = std::make_tuple(int(element), m, n, k);
    auto found = lt_gemms.find(key);
    if (found == lt_gemms.end()) {
      LtShape shape;
      shape.gemm = std::make_unique<dequant_cublas::DenseGemm>();
      shape.status = dequant_cublas::DenseGemm::create(lt, element, m, n, k, dequant_cublas::kCublasWorkspaceBytes,
                                                       dequant_cublas::kLtAlgorithms, shape.gemm.get());
      if (!shape.status.ok()) shape.gemm.reset();
      found = lt_gemms.emplace(key, std::move(shape)).first;
    }
    *out = found->second.gemm.get();
    return found->second.status;
  }

  const FusedEntry* find(const KernelConfig& config, const Format& format) const {
    const auto found = fused_index.find(std::make_pair(config, format));
    return found == fused_index.end() ? nullptr : &fused_kernels[found->second];
  }
  // The entry whose grouped kernel serves `config` in `format`, or null.
  const FusedEntry* find_grouped(const KernelConfig& config, const Format& format) const {
    const FusedEntry* entry = config.split_k == 1 ? find(config, format) : nullptr;
    return entry != nullptr && entry->kernel.launch_grouped != nullptr ? entry : nullptr;
  }
};

namespace {

Status cuda_status(cudaError_t error, const char* what) {
  return Status(StatusCode::kCudaError, std::string(what) + ": " + cudaGetErrorString(error));
}

// The tensor-core grid is one-dimensional over output tiles (see tile_scheduler.cuh).
long long output_tiles(const GemmArguments& args, const KernelConfig& config) {
  return ((static_cast<long long>(args.m) + config.tile_m - 1) / config.tile_m) *
         ((static_cast<long long>(args.n) + config.tile_n - 1) / config.tile_n);
}

// See fused::Params::group_shift. check_group_size() has already admitted the group.
int group_shift(int k, int group_size) {
  if (group_size == k && (group_size & (group_size - 1)) != 0) return 31;
  int shift = 0;
  while ((1 << shift) < group_size) ++shift;
  return shift;
}

}  // namespace

GemmRunner::GemmRunner() : impl_(std::make_unique<Impl>()) {
  // No device at all is its own answer: CUDA reports it as "driver version is insufficient" or
  // "no CUDA-capable device", depending on whether a driver is installed, which misleads on a
  // machine that simply has no GPU.
  int device_count = 0;
  if (cudaError_t error = cudaGetDeviceCount(&device_count); error != cudaSuccess || device_count == 0) {
    status_ = Status(StatusCode::kNoDevice,
                     std::string("no CUDA device is visible (") +
                         (error != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorString(error)
                                               : std::string("0 devices")) +
                         "); w4a16's GEMM needs an NVIDIA GPU");
    cudaGetLastError();
    return;
  }
  if (cudaError_t error = cudaGetDevice(&device_); error != cudaSuccess) {
    status_ = cuda_status(error, "cudaGetDevice");
    cudaGetLastError();
    return;
  }
  cudaDeviceProp properties;
  if (cudaError_t error = cudaGetDeviceProperties(&properties, device_); error != cudaSuccess) {
    status_ = cuda_status(error, "cudaGetDeviceProperties");
    return;
  }
  sm_version_ = properties.major * 10 + properties.minor;
  sm_count_ = properties.multiProcessorCount;

  // Fused kernels: need an sm_80+ device and a binary whose body was compiled for sm_80+. Every
  // tile is compiled in every format; configs() lists each tile (and split) once.
  if (sm_version_ >= 80) {
    std::vector<fused::CompiledKernel> compiled;
    fused::append_compiled_kernels(compiled);
    for (const auto& kernel : compiled) {
      const bool warp_specialized = kernel.shape.family == KernelFamily::kWarpSpecialized;
      // sm_90a machine code runs on sm_90 parts only, so the wgmma tiles are only offered there.
      if (warp_specialized && sm_version_ != 90) continue;
      const int compiled_arch = kernel.compiled_for();
      if (compiled_arch < (warp_specialized ? 90 : 80) || kernel.prepare() != cudaSuccess) {
        cudaGetLastError();  // a missing binary is expected on some builds, not an error state
        continue;
      }
      const int resident_blocks = kernel.resident_blocks_per_sm();  // after prepare(): its shared-memory limit
      fused::CompiledKernel usable = kernel;
      if (usable.launch_grouped != nullptr && usable.prepare_grouped() != cudaSuccess) {
        cudaGetLastError();
        usable.launch_grouped = nullptr;
      }
      if (usable.launch_grouped != nullptr) {
        const KernelConfig config = config_of(kernel.shape, 1);
        if (std::find(grouped_configs_.begin(), grouped_configs_.end(), config) == grouped_configs_.end()) {
          grouped_configs_.push_back(config);
        }
      }
      for (int split : heuristics::split_k_choices()) {
        const KernelConfig config = config_of(kernel.shape, split);
        if (std::find(configs_.begin(), configs_.end(), config) == configs_.end()) configs_.push_back(config);
        impl_->fused_kernels.push_back({config, kernel.format, usable, compiled_arch, resident_blocks});
      }
    }
  }

  impl_->gather_arch = act_order::compiled_arch();
  impl_->gather_shared_limit = act_order::prepare();

  // dequant_cublas: any device the dequantize kernel was built for.
  if (dequant_cublas::probe_kernel() == cudaSuccess) {
    if (cublasStatus_t error = cublasCreate(&impl_->cublas); error != CUBLAS_STATUS_SUCCESS) {
      status_ = Status(StatusCode::kCublasError, std::string("cublasCreate: ") + cublasGetStatusString(error));
      configs_.clear();
      grouped_configs_.clear();
      return;
    }
    KernelConfig config;
    config.family = KernelFamily::kDequantCublas;
    configs_.push_back(config);
    // cuBLASLt's candidates as configs of their own, for profile() (the heuristics keep
    // cublasGemmEx: untimed, Lt's first choice is no faster, bench/NOTES.md entry 29).
    if (cublasLtCreate(&impl_->lt) == CUBLAS_STATUS_SUCCESS) {
      for (int rank = 1; rank <= dequant_cublas::kLtAlgorithms; ++rank) {
        config.dense_algorithm = rank;
        configs_.push_back(config);
      }
    } else {
      impl_->lt = nullptr;
    }
  } else {
    cudaGetLastError();
  }

  impl_->build_index(configs_);
  if (configs_.empty()) {
    status_ = Status(StatusCode::kUnsupportedArch, "no w4a16 kernel in this build runs on " +
                                                       std::string(properties.name) + " (sm_" +
                                                       std::to_string(sm_version_) +
                                                       "); rebuild with CMAKE_CUDA_ARCHITECTURES including it");
  }
}

GemmRunner::~GemmRunner() = default;

KernelConfig GemmRunner::heuristic_config(int m, int n, int k) const {
  return heuristics::choose(m, n, k, {sm_version_, sm_count_}, configs_);
}

KernelConfig GemmRunner::default_config(int m, int n, int k, int group_size, Format format) const {
  auto it = profiled_.find({tuning_m_bucket(m), n, k, group_size, format});
  return it != profiled_.end() ? it->second : heuristic_config(m, n, k);
}

size_t GemmRunner::workspace_bytes(int m, int n, int k, const KernelConfig& config) const {
  return required_workspace_bytes(m, n, k, config);
}

size_t GemmRunner::workspace_bytes(int m, int n, int k, int group_size, Format format) const {
  return workspace_bytes(m, n, k, default_config(m, n, k, group_size, format));
}

size_t GemmRunner::workspace_bytes(const GemmArguments& args, const KernelConfig& config) const {
  return required_workspace_bytes(args, config);
}

size_t GemmRunner::workspace_bytes(const GemmArguments& args) const {
  return workspace_bytes(args, default_config(args.m, args.n, args.k, args.group_size, args.format()));
}

Status GemmRunner::check(const GemmArguments& args, const KernelConfig& config, const void* workspace,
                         size_t workspace_size) const {
  const dequant_cublas::DenseGemm* dense_gemm = nullptr;
  return check_call(args, config, workspace, workspace_size, &dense_gemm);
}

Status GemmRunner::check_call(const GemmArguments& args, const KernelConfig& config, const void* workspace,
                              size_t workspace_size, const dequant_cublas::DenseGemm** dense_gemm) const {
  *dense_gemm = nullptr;
  if (!status_.ok()) return status_;
  // Kernel attributes (shared-memory limits) and the cuBLAS handle belong to the runner's device.
  int current_device = -1;
  if (cudaGetDevice(&current_device) != cudaSuccess || current_device != device_) {
    return Status(StatusCode::kInvalidArgument, "the runner was created on device " + std::to_string(device_) +
                                                    " but the current device is " + std::to_string(current_device));
  }
  if (impl_->listed.count(config) == 0) {
    return Status(StatusCode::kUnsupportedArch,
                  "config " + config.name() + " has no kernel for sm_" + std::to_string(sm_version_) + " in this build");
  }
  if (args.element != ElementType::kFloat16 && args.element != ElementType::kBFloat16) {
    return Status(StatusCode::kInvalidArgument,
                  "element must be ElementType::kFloat16 or kBFloat16, got " + std::to_string(int(args.element)));
  }
  if (config.fused() && impl_->find(config, args.format()) == nullptr) {
    return Status(StatusCode::kUnsupportedArch, "config " + config.name() + " has no " +
                                                    format_name(args.format()) + " kernel in this build");
  }
  if (Status s = check_arguments(args, config, workspace, workspace_size); !s.ok()) return s;
  if (config.family == KernelFamily::kDequantCublas && config.dense_algorithm > 0) {
    return impl_->lt_gemm(args.element, args.m, args.n, args.k, dense_gemm);
  }
  return Status::success();
}

Status GemmRunner::gemm(const GemmArguments& args, void* workspace, size_t workspace_size, cudaStream_t stream) const {
  KernelConfig config = default_config(args.m, args.n, args.k, args.group_size, args.format());
  // A profiled cuBLASLt config needs 256-byte aligned operands; on a 16-byte aligned view (a
  // slice of a larger tensor) the default falls back to cublasGemmEx, which takes any, with the
  // same workspace. (Forced, the config is refused instead: check_arguments.)
  if (config.family == KernelFamily::kDequantCublas && !lt_operands_aligned(args)) config.dense_algorithm = 0;
  return gemm(args, config, workspace, workspace_size, stream);
}

Status GemmRunner::gemm(const GemmArguments& args, const KernelConfig& config, void* workspace, size_t workspace_size,
                        cudaStream_t stream) const {
  const dequant_cublas::DenseGemm* dense_gemm = nullptr;
  if (Status s = check_call(args, config, workspace, workspace_size, &dense_gemm); !s.ok()) return s;

  // Act-order: A's columns gathered into the packed weights' k order at the front of the
  // workspace; the family's own workspace follows (required_workspace_bytes).
  const void* a = args.a;
  uint8_t* family_workspace = static_cast<uint8_t*>(workspace);
  if (args.k_permutation != nullptr) {
    const bool programmatic = programmatic_launch() != ProgrammaticLaunch::kOff && impl_->gather_arch >= 90;
    if (cudaError_t error = act_order::gather_columns(args.a, args.k_permutation, workspace, args.m, args.k, stream,
                                                      programmatic, impl_->gather_shared_limit);
        error != cudaSuccess) {
      return cuda_status(error, "act-order gather launch");
    }
    a = workspace;
    family_workspace += act_order::gathered_bytes(args.m, args.k);
  }

  if (config.family == KernelFamily::kDequantCublas) {
    dequant_cublas::Params params;
    params.a = a;
    params.packed_weights = args.packed_weights;
    params.scales = args.scales;
    params.zeros = args.zeros;
    params.bias = args.bias;
    params.element = args.element;
    params.c = args.c;
    params.m = args.m;
    params.n = args.n;
    params.k = args.k;
    params.group_size = args.group_size;
    params.alpha = args.alpha;
    // Non-null for a dequant_cublas_lt<r> config (check_call looked it up).
    const dequant_cublas::DenseGemm* lt = dense_gemm;
    size_t lt_candidate = 0;
    if (lt != nullptr) {
      // The r-th candidate, or the last where the heuristic offers fewer (see KernelConfig).
      lt_candidate = std::min(static_cast<size_t>(config.dense_algorithm), lt->candidates().size()) - 1;
    }
    // The GemmEx path sets the shared handle's stream and workspace: one caller at a time. The
    // cuBLASLt path passes both per call and needs no lock.
    std::unique_lock<std::mutex> lock(impl_->cublas_mutex, std::defer_lock);
    if (lt == nullptr) lock.lock();
    return dequant_cublas::run(params, impl_->cublas, lt, lt_candidate, family_workspace, stream);
  }

  const Impl::FusedEntry* entry = impl_->find(config, args.format());
  fused::Params params;
  params.a = a;
  params.packed_weights = args.packed_weights;
  params.scales = args.scales;
  params.zeros = args.zeros;
  params.bias = args.bias;
  params.c = args.c;
  params.partials = reinterpret_cast<float*>(family_workspace);
  params.m = args.m;
  params.n = args.n;
  params.k = args.k;
  params.group_size = args.group_size;
  params.group_shift = group_shift(args.k, args.group_size);
  params.alpha = args.alpha;
  params.split_k = config.split_k;
  // Programmatic launch (see ProgrammaticLaunch; what it overlaps: the prologues of the kernel
  // families) and the streaming tiles' trigger point, per launch: heuristics::launch_overlap. The
  // reduce kernel is built for the same targets as the fused one, so one arch check covers both.
  const long long blocks = output_tiles(args, config) * config.split_k;
  const heuristics::LaunchOverlap overlap =
      heuristics::launch_overlap(config.family, blocks, entry->resident_blocks_per_sm, sm_count_);
  const ProgrammaticLaunch mode = programmatic_launch();
  const bool programmatic =
      entry->compiled_arch >= 90 && (mode == ProgrammaticLaunch::kAlways ||
                                     (mode == ProgrammaticLaunch::kWhereItHelps && overlap.programmatic_helps));
  params.launch_dependents_at_entry = overlap.launch_dependents_at_entry && mode != ProgrammaticLaunch::kOff;
  params.programmatic = programmatic;
  params.warm_l2_before_wait = programmatic && args.k_permutation != nullptr;
  if (cudaError_t error = entry->kernel.launch(params, stream, programmatic); error != cudaSuccess) {
    return cuda_status(error, (std::string(to_string(config.family)) + " launch").c_str());
  }
  if (config.split_k > 1) {
    // The reduce reads nothing before griddepcontrol.wait (its first instruction), so unless PDL
    // is off it launches programmatically behind the GEMM, whatever the GEMM's own launch: its
    // launch then overlaps the GEMM's tail instead of following it.
    const bool reduce_programmatic = mode != ProgrammaticLaunch::kOff && entry->compiled_arch >= 90;
    if (cudaError_t error = fused::launch_split_k_reduce(params, args.element, stream, reduce_programmatic);
        error != cudaSuccess) {
      return cuda_status(error, "split-K reduce launch");
    }
  }
  return Status::success();
}

KernelConfig GemmRunner::default_grouped_config(int rows, int experts, int n, int k) const {
  return heuristics::choose_grouped(rows, experts, n, k, {sm_version_, sm_count_}, grouped_configs_);
}

Status GemmRunner::check_grouped(const GroupedGemmArguments& args, const KernelConfig& config) const {
  if (!status_.ok()) return status_;
  int current_device = -1;
  if (cudaGetDevice(&current_device) != cudaSuccess || current_device != device_) {
    return Status(StatusCode::kInvalidArgument, "the runner was created on device " + std::to_string(device_) +
                                                    " but the current device is " + std::to_string(current_device));
  }
  if (Status s = check_grouped_arguments(args, config); !s.ok()) return s;
  if (impl_->find_grouped(config, args.format()) == nullptr) {
    return Status(StatusCode::kUnsupportedArch, "config " + config.name() + " has no grouped " +
                                                    format_name(args.format()) + " kernel for sm_" +
                                                    std::to_string(sm_version_) + " in this build (see grouped_configs())");
  }
  return Status::success();
}

Status GemmRunner::grouped_gemm(const GroupedGemmArguments& args, cudaStream_t stream) const {
  return grouped_gemm(args, default_grouped_config(args.rows, args.experts, args.n, args.k), stream);
}

Status GemmRunner::grouped_gemm(const GroupedGemmArguments& args, const KernelConfig& config,
                                cudaStream_t stream) const {
  if (Status s = check_grouped(args, config); !s.ok()) return s;
  if (args.rows == 0) return Status::success();
  const Impl::FusedEntry* entry = impl_->find_grouped(config, args.format());
  fused::GroupedParams grouped;
  fused::Params& params = grouped.base;
  params.a = args.a;
  params.packed_weights = args.packed_weights;
  params.scales = args.scales;
  params.zeros = args.zeros;
  params.bias = args.bias;
  params.c = args.c;
  params.m = args.rows;
  params.n = args.n;
  params.k = args.k;
  params.group_size = args.group_size;
  params.group_shift = group_shift(args.k, args.group_size);
  params.alpha = args.alpha;
  grouped.expert_offsets = args.expert_offsets;
  grouped.row_weights = args.row_weights;
  grouped.experts = args.experts;
  grouped.m_slots = grouped_m_slots(args.rows, args.experts, config.tile_m);
  grouped.weight_bytes_per_expert = static_cast<long long>(args.n) * args.k / 2;
  grouped.groups_per_expert = static_cast<long long>(args.k / args.group_size) * args.n;
  if (cudaError_t error = entry->kernel.launch_grouped(grouped, stream); error != cudaSuccess) {
    return cuda_status(error, "grouped launch");
  }
  return Status::success();
}

Status GemmRunner::profile(const GemmArguments& args, void* workspace, size_t workspace_size, cudaStream_t stream,
                           ProfileResult* result, int iterations, int repeats) {
  if (!status_.ok()) return status_;
  if (configs_.empty()) return Status(StatusCode::kUnsupportedArch, "profile: this runner lists no config");
  if (result == nullptr) return Status(StatusCode::kInvalidArgument, "profile: result must not be null");
  if (iterations < 1 || repeats < 1) return Status(StatusCode::kInvalidArgument, "profile: iterations, repeats >= 1");
  *result = ProfileResult{};
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaError_t error = cudaEventCreate(&start); error != cudaSuccess) return cuda_status(error, "cudaEventCreate");
  if (cudaError_t error = cudaEventCreate(&stop); error != cudaSuccess) {
    cudaEventDestroy(start);
    return cuda_status(error, "cudaEventCreate");
  }
  Status outcome;
  for (const KernelConfig& config : configs_) {
    if (Status s = check(args, config, workspace, workspace_size); !s.ok()) {
      result->skipped.emplace_back(config, s.to_string());
      continue;
    }
    // Warm-up (also surfaces launch errors before timing).
    if (Status s = gemm(args, config, workspace, workspace_size, stream); !s.ok()) {
      outcome = s;
      break;
    }
    std::vector<float> samples;
    for (int r = 0; r < repeats && outcome.ok(); ++r) {
      if (cudaError_t error = cudaEventRecord(start, stream); error != cudaSuccess) {
        outcome = cuda_status(error, "profile: cudaEventRecord");
        break;
      }
      for (int i = 0; i < iterations && outcome.ok(); ++i) outcome = gemm(args, config, workspace, workspace_size, stream);
      if (!outcome.ok()) break;
      float milliseconds = 0.0f;
      cudaError_t error = cudaEventRecord(stop, stream);
      if (error == cudaSuccess) error = cudaEventSynchronize(stop);
      if (error == cudaSuccess) error = cudaEventElapsedTime(&milliseconds, start, stop);
      if (error != cudaSuccess) {
        outcome = cuda_status(error, "profile: timing");
        break;
      }
      samples.push_back(milliseconds * 1000.0f / iterations);
    }
    if (!outcome.ok()) break;
    std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
    result->timings.emplace_back(config, samples[samples.size() / 2]);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!outcome.ok()) return outcome;
  if (result->timings.empty()) {
    // Every config was rejected by check(): report why the first one was.
    const Status first = check(args, configs_.front(), workspace, workspace_size);
    return Status(first.code(), "profile: no config could run; first rejection: " + first.message());
  }
  const auto best = std::min_element(result->timings.begin(), result->timings.end(),
                                     [](const auto& x, const auto& y) { return x.second < y.second; });
  result->best = best->first;
  result->best_microseconds = best->second;
  profiled_[{tuning_m_bucket(args.m), args.n, args.k, args.group_size, args.format()}] = best->first;
  return Status::success();
}

namespace {

TuningDevice tuning_device(int device) {
  cudaDeviceProp properties{};
  TuningDevice key;
  if (cudaGetDeviceProperties(&properties, device) == cudaSuccess) {
    key.name = properties.name;
    key.sm_count = properties.multiProcessorCount;
  } else {
    cudaGetLastError();
  }
  key.version = W4A16_VERSION;
  key.cublas_version = static_cast<long long>(cublasLtGetVersion());
  return key;
}

}  // namespace

Status GemmRunner::save_tuning(const std::string& path) const {
  if (!status_.ok()) return status_;
  std::ofstream out(path);
  out << tuning_to_json(tuning_device(device_), profiled_);
  if (!out) return Status(StatusCode::kInvalidArgument, "save_tuning: could not write " + path);
  return Status::success();
}

Status GemmRunner::load_tuning(const std::string& path) {
  if (!status_.ok()) return status_;
  std::ifstream in(path);
  if (!in) return Status(StatusCode::kInvalidArgument, "load_tuning: cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  TuningTable table;
  if (Status s = tuning_from_json(text.str(), tuning_device(device_), &table); !s.ok()) return s;
  for (const auto& [key, config] : table) {
    if (std::find(configs_.begin(), configs_.end(), config) == configs_.end()) {
      return Status(StatusCode::kUnsupportedArch, "load_tuning: " + config.name() + " is not in this runner's list");
    }
  }
  for (const auto& [key, config] : table) profiled_[key] = config;
  return Status::success();
}

}  // namespace w4a16
