#pragma once
// The W4A16 GEMM runner: C[m,n] = alpha * A[m,k] * dequant(W)^T (+ bias[n]).
//
//   A      T [m][k] row-major               16-byte aligned
//   W      packed int4 (pack_weights)       16-byte aligned, n % 16 == 0, k % 64 == 0
//   scales T [k / group_size][n]            16-byte aligned
//   zeros  T [k / group_size][n] or nullptr 16-byte aligned (null: symmetric, w = s * (q - 8))
//   bias   T [n] or nullptr                 16-byte aligned
//   C      T [m][n] row-major               16-byte aligned
//   group_size in {32, 64, 128, k}, k % group_size == 0, m >= 1
// T is GemmArguments::element (fp16 or bf16); every 16-bit operand has that one type, and the
// math accumulates in fp32 whatever it is. With zeros, w = s * (q - z) (w4a16/format.h).
//
// The runner works on the caller's stream and memory. gemm() allocates nothing, never synchronizes
// and does no host work proportional to the problem, so it can be captured in a CUDA graph. (One
// exception, outside the default configs: a dequant_cublas_lt<r> config's first call, or check(),
// at a new (m, n, k, element) asks cuBLASLt's heuristic once and keeps the answer.)
// One runner per device. Threads: gemm(), check(), workspace_bytes(), default_config(),
// heuristic_config() and configs() may be called from several host threads at once (each thread
// with its own stream, workspace and C, and the runner's device current); profile(),
// load_tuning() and set_programmatic_launch() change the runner and must not overlap any other
// call on it. Several runners (on one device or many) are independent.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <cuda_runtime_api.h>

#include "w4a16/format.h"
#include "w4a16/status.h"

namespace w4a16 {

namespace dequant_cublas {
class DenseGemm;  // src/kernels/dequant_cublas/: a call shape's cuBLASLt problem (private)
}  // namespace dequant_cublas

// The fused families share one skeleton (src/kernels/fused/: tile scheduler, epilogue, split-K)
// and differ in their mainloop; dequant_cublas is the unfused fallback. Config names start with
// the family's prefix (ms_, st_, ws_).
enum class KernelFamily {
  // Multistage ("ms_"): a block-wide cp.async pipeline of shared-memory stages feeding mma.sync
  // m16n8k16 with in-register int4 dequant. sm_80 and newer. Optional split-K with a
  // deterministic reduction through the workspace.
  kMultistage,
  // Streaming ("st_", decode, m <= 16): the same mma.sync math and packed weights, but each warp
  // streams its own weights, activations and scales through a private ring of shared-memory
  // stages, so the k loop has no block barrier. sm_80 and newer; `stages` is the ring depth (each
  // warp keeps stages - 1 k-blocks in flight).
  kStreaming,
  // Warp-specialized ("ws_", Hopper): warpgroup MMA (wgmma; A = dequantized weights from
  // registers, B = activations from shared memory); a producer warpgroup moves each stage with TMA
  // loads, the math warpgroups wait on per-stage mbarriers instead of a block barrier. sm_90a
  // builds on sm_90 devices only; warps_m x warps_n counts the math warps (the producer comes on
  // top), warps_k is 1.
  kWarpSpecialized,
  // Dequantize W to the activation type in the workspace, then cuBLAS. sm_75 and newer; the
  // fallback on GPUs without a fused kernel, and a contender at large m. "dequant_cublas" calls
  // cublasGemmEx (cuBLAS's own per-shape choice); "dequant_cublas_lt<r>" (KernelConfig::
  // dense_algorithm = r) runs cuBLASLt's r-th heuristic candidate for the call's shape, for
  // profile() to time against it.
  kDequantCublas,
};
const char* to_string(KernelFamily family);

// One point in the tuning space. For kDequantCublas only `family` and `dense_algorithm` matter.
struct KernelConfig {
  KernelFamily family = KernelFamily::kMultistage;
  int tile_m = 0;    // activation rows per thread block
  int tile_n = 0;    // output channels (weight rows) per thread block
  int warps_m = 0;   // warp grid inside the block: warps_m x warps_n x warps_k, where the
  int warps_n = 0;   // warps_k warps of one output position split each stage's k range
  int warps_k = 1;
  int stages = 0;    // pipeline depth: shared-memory stages per block (ms_, ws_) or per warp (st_)
  int split_k = 1;   // thread blocks sharing one output tile along k
  // kDequantCublas only: 0 = cublasGemmEx; r >= 1 = cuBLASLt's r-th heuristic candidate for the
  // call's (m, n, k, element), or its last where it offers fewer than r. Names parse for r up to
  // 99; configs() lists r = 1..4.
  int dense_algorithm = 0;

  std::string name() const;  // e.g. "ms_m8n32_w1x2x4_s8_k1", "ws_m128n128_w1x8x1_s8_k1", "dequant_cublas"
  bool fused() const { return family != KernelFamily::kDequantCublas; }  // the fused families
  bool operator==(const KernelConfig& other) const;
  bool operator!=(const KernelConfig& other) const { return !(*this == other); }
};
// Parses KernelConfig::name(); returns false on an unknown name.
bool parse_kernel_config(const std::string& name, KernelConfig* config);

struct GemmArguments {
  const void* a = nullptr;
  const void* packed_weights = nullptr;
  const void* scales = nullptr;
  const void* bias = nullptr;   // optional
  void* c = nullptr;
  int m = 0;
  int n = 0;
  int k = 0;
  int group_size = 128;
  float alpha = 1.0f;
  ElementType element = ElementType::kFloat16;  // the type of a, scales, zeros, bias and c
  const void* zeros = nullptr;                  // optional zero points (either zero-point QuantOp)
  // Set when the zero points are not all whole numbers 0..15 (HQQ-style): the call then runs
  // QuantOp::kScaleAndFloatZeros, whose decode kernels add one mma and fma per group for the
  // fraction. Leave it clear for GPTQ, AWQ, compressed-tensors and quantize() zero points, which
  // the kernels fold into the code unpack at no cost; a fractional zero point without it gives
  // unspecified results (rounded by some configs, not by others). Only with zeros. A layer from
  // load_packed_layer says which it is: set this when its format.quant is kScaleAndFloatZeros.
  bool float_zeros = false;
  // Optional act-order permutation (GPTQ desc_act; checkpoint import writes it): int32 [k], a
  // permutation of [0, k), 16-byte aligned. Column j of the packed weights multiplies column
  // k_permutation[j] of A, i.e. C = A[:, k_permutation] * dequant(W)^T. Null: the identity. The
  // values are not checked on the device (load_packed_layer checks them once, on the host).
  const int32_t* k_permutation = nullptr;

  QuantOp quant() const {
    if (zeros == nullptr) return QuantOp::kScaleOnly;
    return float_zeros ? QuantOp::kScaleAndFloatZeros : QuantOp::kScaleAndZeros;
  }
  Format format() const { return {element, quant()}; }
};

// A grouped (mixture-of-experts) GEMM: E experts of one shape in one launch. The rows of A are
// sorted by expert, expert e owning rows [expert_offsets[e], expert_offsets[e + 1]) of A and C:
//   C[r] = row_weights[r] * (alpha * A[r] * dequant(W_e)^T + bias_e)      (row_weights optional)
// w4a16/moe.h (route_tokens) builds the offsets and the sorted rows' sources from top-k routing.
//   A        T [rows][k]                       16-byte aligned
//   W        [experts][n * k / 2] bytes        each expert pack_weights'd, back to back
//   scales   T [experts][k / group_size][n]    (zeros the same, or nullptr)
//   bias     T [experts][n] or nullptr
//   C        T [rows][n]                       rows past expert_offsets[experts] are not written
// expert_offsets and row_weights are device memory written by the caller's routing (no host copy,
// no synchronization: the call can be captured in a CUDA graph and replayed with new routing).
// `rows` is what the launch is sized for, the most rows the routing may produce (tokens x top_k);
// the device offsets must be nondecreasing from 0 to at most `rows`. Offsets that break this give
// wrong results but no access outside A and C (the kernel clamps them into [0, rows]). Experts
// without rows cost nothing: their weights are never read. No workspace.
struct GroupedGemmArguments {
  const void* a = nullptr;
  const void* packed_weights = nullptr;
  const void* scales = nullptr;
  const void* zeros = nullptr;  // optional zero points, as GemmArguments::zeros, per expert
  const void* bias = nullptr;   // optional, per expert
  void* c = nullptr;
  const int32_t* expert_offsets = nullptr;  // device int32 [experts + 1], 4-byte aligned
  const float* row_weights = nullptr;       // optional device fp32 [rows], 4-byte aligned
  int experts = 0;  // 1 .. 65536
  int rows = 0;     // >= 0; 0 launches nothing
  int n = 0;
  int k = 0;
  int group_size = 128;
  float alpha = 1.0f;
  ElementType element = ElementType::kFloat16;
  bool float_zeros = false;  // as GemmArguments::float_zeros

  QuantOp quant() const {
    if (zeros == nullptr) return QuantOp::kScaleOnly;
    return float_zeros ? QuantOp::kScaleAndFloatZeros : QuantOp::kScaleAndZeros;
  }
  Format format() const { return {element, quant()}; }
};

struct ProfileResult {
  KernelConfig best;
  float best_microseconds = 0.0f;
  std::vector<std::pair<KernelConfig, float>> timings;  // every config that ran, microseconds
  std::vector<std::pair<KernelConfig, std::string>> skipped;  // and why the others did not
};

class GemmRunner {
 public:
  // Binds to the current CUDA device. Check status() before use.
  GemmRunner();
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // Why construction failed (no device, no kernel for this arch, cuBLAS init), or success.
  const Status& status() const { return status_; }
  int device() const { return device_; }
  int sm_version() const { return sm_version_; }  // e.g. 90
  int sm_count() const { return sm_count_; }

  // Every config this device has a kernel for (each fused tile is compiled in every format).
  // Empty when status() is not ok.
  const std::vector<KernelConfig>& configs() const { return configs_; }

  // The heuristic default for a problem (a tile-size table, see src/runner/heuristics.cpp).
  KernelConfig heuristic_config(int m, int n, int k) const;
  // The config gemm() without a config uses: the profiled best if profile() ran for this
  // (m, n, k, group_size, format), else the heuristic (the same for every format: a format needs
  // no tuning of its own).
  KernelConfig default_config(int m, int n, int k, int group_size, Format format = {}) const;

  // Workspace bytes `config` needs for (m, n, k).
  size_t workspace_bytes(int m, int n, int k, const KernelConfig& config) const;
  // Workspace bytes the default config needs.
  size_t workspace_bytes(int m, int n, int k, int group_size, Format format = {}) const;
  // The same for a whole call: these also count what a k_permutation needs (the fused kernels
  // gather A's permuted columns into the workspace). Prefer these when the weights may be
  // act-order.
  size_t workspace_bytes(const GemmArguments& args, const KernelConfig& config) const;
  size_t workspace_bytes(const GemmArguments& args) const;

  // Validates everything (pointers, alignment, shapes, group, workspace, arch) before launching.
  Status gemm(const GemmArguments& args, void* workspace, size_t workspace_bytes, cudaStream_t stream) const;
  Status gemm(const GemmArguments& args, const KernelConfig& config, void* workspace,
              size_t workspace_bytes, cudaStream_t stream) const;

  // Times every config whose workspace fits (median of `repeats` timed runs of `iterations`
  // back-to-back calls each), records the fastest as the default for this problem (and every m
  // up to the next power of two: the result's m bucket), and returns the timings. Synchronizes
  // `stream`; writes C. Not for the hot path. The call is timed as given (with a k_permutation,
  // the gather included), but the result is recorded under the same key as a call without one.
  Status profile(const GemmArguments& args, void* workspace, size_t workspace_bytes,
                 cudaStream_t stream, ProfileResult* result, int iterations = 20, int repeats = 5);

  // Programmatic dependent launch (PDL, sm_90+): a kernel may start while the previous kernel in
  // the stream is finishing. Before its griddepcontrol.wait it only sets up shared memory and (the
  // multistage and warp-specialized kernels, and the streaming ones behind an act-order gather)
  // asks L2 for its first weights; every global read and
  // write comes after. So it is safe whatever the previous kernel writes, weights included.
  // Applies only to kernels whose binary was built for sm_90+ (a JIT-compiled sm_80 body never
  // uses it). Our kernels let their successor launch before they store C (after their mainloop,
  // or at entry for decode grids that fill the GPU): a kernel of yours launched with PDL behind a
  // GEMM must call cudaGridDependencySynchronize() before it reads C. Its early blocks also hold
  // SM slots while they wait, which kernels in other streams then do not get.
  //   kWhereItHelps (default): grids that fill the GPU's block slots (at most half a free slot
  //     per SM), and streaming (decode) grids of at most one block per SM, launch early. Other
  //     grids launched early got their blocks placed into whatever slots the previous kernel
  //     freed first, several to an SM, and ran up to 20% slower (bench/NOTES.md, entry 20).
  //   kAlways: every launch (the tests use it to run every kernel's pre-wait path).
  //   kOff: no launch is programmatic (what a per-kernel profiler may want); no decode grid lets
  //     its successor launch at its entry.
  enum class ProgrammaticLaunch { kOff, kWhereItHelps, kAlways };
  void set_programmatic_launch(ProgrammaticLaunch mode) { programmatic_launch_ = mode; }
  ProgrammaticLaunch programmatic_launch() const {
    return sm_version_ >= 90 ? programmatic_launch_ : ProgrammaticLaunch::kOff;
  }

  // The profiled defaults as a JSON file (keyed by this device's name and SM count and the
  // library's version), and back: a server profiles once and loads the file at start-up.
  // load_tuning() rejects a file of another device or version, and configs this runner does not
  // list; what it accepts replaces equal entries. Not for the hot path.
  Status save_tuning(const std::string& path) const;
  Status load_tuning(const std::string& path);

  // Grouped (mixture-of-experts) GEMM, see GroupedGemmArguments. The configs with a grouped
  // kernel are the heuristic multistage and streaming tiles without split-K (grouped_configs());
  // the default picks one from the rows per routed expert the call can have on average.
  // Thread-safe like gemm().
  const std::vector<KernelConfig>& grouped_configs() const { return grouped_configs_; }
  KernelConfig default_grouped_config(int rows, int experts, int n, int k) const;
  Status grouped_gemm(const GroupedGemmArguments& args, cudaStream_t stream) const;
  Status grouped_gemm(const GroupedGemmArguments& args, const KernelConfig& config, cudaStream_t stream) const;
  Status check_grouped(const GroupedGemmArguments& args, const KernelConfig& config) const;

  // Validation alone (what gemm() checks before any launch).
  Status check(const GemmArguments& args, const KernelConfig& config, const void* workspace,
               size_t workspace_bytes) const;

 private:
  struct Impl;  // cuBLAS handle and the table of compiled kernels
  // check(), also handing back what a dequant_cublas_lt<r> config launches with (the call
  // shape's cuBLASLt problem; null for other configs), so that gemm() looks it up once.
  Status check_call(const GemmArguments& args, const KernelConfig& config, const void* workspace,
                    size_t workspace_bytes, const dequant_cublas::DenseGemm** dense_gemm) const;
  Status status_;
  int device_ = -1;
  int sm_version_ = 0;
  int sm_count_ = 0;
  ProgrammaticLaunch programmatic_launch_ = ProgrammaticLaunch::kWhereItHelps;
  std::vector<KernelConfig> configs_;
  std::vector<KernelConfig> grouped_configs_;
  std::unique_ptr<Impl> impl_;
  std::map<std::tuple<int, int, int, int, Format>, KernelConfig> profiled_;
};

}  // namespace w4a16
