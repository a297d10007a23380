// The device-free argument rules of the runner (see validate.h).
#include "runner/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "kernels/act_order/gather_columns.h"
#include "kernels/dequant_cublas/dequant_cublas.h"
#include "w4a16/quantize.h"

namespace w4a16 {

namespace {

constexpr size_t kPointerAlignment = 16;     // every cp.async / vector access is 16 bytes
constexpr size_t kWorkspaceAlignment = 256;  // cuBLAS and the fp32 partials
// The fused grid is one-dimensional over output tiles (see fused/tile_scheduler.cuh); grid.x and
// the kernel's int tile index both stop at 2^31 - 1.
constexpr long long kMaxOutputTiles = 2147483647LL;
// The grouped launch: experts' tensors are indexed with 64-bit strides, so the bound only keeps
// the sizes below far from overflow and the scheduler's sweep count small.
constexpr int kMaxExperts = 65536;

bool aligned(const void* pointer, size_t alignment) { return reinterpret_cast<uintptr_t>(pointer) % alignment == 0; }

// A buffer as an address interval [begin, begin + bytes). Sizes stay below 2^63 (int extents
// times 2 bytes), so begin + bytes can only wrap past the top of the address space, which counts
// as overlapping. Null or empty buffers overlap nothing.
struct Region {
  const char* name;
  uintptr_t begin;
  unsigned long long bytes;
};
bool overlap(const Region& x, const Region& y) {
  if (x.begin == 0 || y.begin == 0 || x.bytes == 0 || y.bytes == 0) return false;
  const unsigned long long x_end = x.begin + x.bytes, y_end = y.begin + y.bytes;
  if (x_end < x.begin || y_end < y.begin) return true;
  return x.begin < y_end && y.begin < x_end;
}

// The rules gemm() and grouped_gemm() share, in the order both apply them.
Status check_element(ElementType element) {
  if (element != ElementType::kFloat16 && element != ElementType::kBFloat16) {
    return Status(StatusCode::kInvalidArgument,
                  "element must be ElementType::kFloat16 or kBFloat16, got " + std::to_string(int(element)));
  }
  return Status::success();
}
Status check_layer_rules(int n, int k, int group_size, float alpha, bool float_zeros, const void* zeros) {
  if (n % 16 != 0 || k % 64 != 0) {
    return Status(StatusCode::kUnsupportedShape, "n must be a multiple of 16 and k of 64, got n = " +
                                                     std::to_string(n) + ", k = " + std::to_string(k));
  }
  if (Status s = check_group_size(k, group_size); !s.ok()) return s;
  if (!std::isfinite(alpha)) return Status(StatusCode::kInvalidArgument, "alpha must be finite");
  if (float_zeros && zeros == nullptr) {
    return Status(StatusCode::kInvalidArgument, "float_zeros is set but zeros is null (float_zeros describes the zero points)");
  }
  return Status::success();
}

}  // namespace

size_t required_workspace_bytes(int m, int n, int k, const KernelConfig& config) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  if (config.family == KernelFamily::kDequantCublas) return dequant_cublas::workspace_bytes(n, k);
  if (config.split_k <= 1) return 0;
  // split * m * n fp32 partials; saturates instead of wrapping (check_arguments then reports it).
  size_t bytes = 0;
  if (__builtin_mul_overflow(size_t(config.split_k) * sizeof(float), size_t(m), &bytes) ||
      __builtin_mul_overflow(bytes, size_t(n), &bytes)) {
    return std::numeric_limits<size_t>::max();
  }
  return bytes;
}

size_t required_workspace_bytes(const GemmArguments& args, const KernelConfig& config) {
  const size_t family = required_workspace_bytes(args.m, args.n, args.k, config);
  if (args.k_permutation == nullptr || args.m <= 0 || args.k <= 0) return family;
  size_t total = 0;
  if (__builtin_add_overflow(act_order::gathered_bytes(args.m, args.k), family, &total)) {
    return std::numeric_limits<size_t>::max();
  }
  return total;
}

bool lt_operands_aligned(const GemmArguments& args) {
  return (args.k_permutation != nullptr || aligned(args.a, kWorkspaceAlignment)) && aligned(args.c, kWorkspaceAlignment);
}

Status check_arguments(const GemmArguments& args, const KernelConfig& config, const void* workspace,
                       size_t workspace_size) {
  if (Status s = check_element(args.element); !s.ok()) return s;
  if (args.a == nullptr || args.packed_weights == nullptr || args.scales == nullptr || args.c == nullptr) {
    return Status(StatusCode::kInvalidArgument, "a, packed_weights, scales and c must not be null");
  }
  if (args.m <= 0 || args.n <= 0 || args.k <= 0) {
    return Status(StatusCode::kInvalidArgument, "m, n and k must be positive, got " + std::to_string(args.m) + " x " +
                                                     std::to_string(args.n) + " x " + std::to_string(args.k));
  }
  if (Status s = check_layer_rules(args.n, args.k, args.group_size, args.alpha, args.float_zeros, args.zeros); !s.ok()) return s;
  const struct {
    const void* pointer;
    const char* name;
  } pointers[] = {{args.a, "a"},       {args.packed_weights, "packed_weights"}, {args.scales, "scales"},
                  {args.zeros, "zeros"}, {args.bias, "bias"},                     {args.c, "c"},
                  {args.k_permutation, "k_permutation"}};
  for (const auto& p : pointers) {
    if (p.pointer != nullptr && !aligned(p.pointer, kPointerAlignment)) {
      return Status(StatusCode::kMisalignedPointer, std::string(p.name) + " must be 16-byte aligned");
    }
  }
  // cuBLASLt's candidates assume 256-byte aligned operands (its heuristic's default, which the
  // dense weights in the workspace meet); cublasGemmEx takes any 16-byte aligned view. With
  // act-order the GEMM reads the gathered copy of A at the workspace's start instead of a.
  if (config.family == KernelFamily::kDequantCublas && config.dense_algorithm > 0) {
    const bool a_read = args.k_permutation == nullptr;
    if (!lt_operands_aligned(args)) {
      return Status(StatusCode::kMisalignedPointer,
                    config.name() + " runs cuBLASLt, which needs " + (a_read ? "a and c" : "c") +
                        " 256-byte aligned (dequant_cublas takes 16-byte aligned ones)");
    }
  }
  if (config.fused()) {
    const long long tiles = ((static_cast<long long>(args.m) + config.tile_m - 1) / config.tile_m) *
                            ((static_cast<long long>(args.n) + config.tile_n - 1) / config.tile_n);
    if (tiles > kMaxOutputTiles) {
      return Status(StatusCode::kUnsupportedShape, "m x n = " + std::to_string(args.m) + " x " +
                                                       std::to_string(args.n) +
                                                       " has more than 2^31 - 1 output tiles for config " + config.name());
    }
    if (config.split_k > args.k / 64) {
      return Status(StatusCode::kInvalidArgument, "split_k " + std::to_string(config.split_k) +
                                                      " exceeds the k / 64 = " + std::to_string(args.k / 64) +
                                                      " k-blocks");
    }
  }
  const size_t required = required_workspace_bytes(args, config);
  if (required > 0) {
    if (workspace == nullptr || workspace_size < required) {
      return Status(StatusCode::kWorkspaceTooSmall,
                    config.name() + " needs " + std::to_string(required) + " bytes of workspace, got " +
                        (workspace == nullptr ? std::string("a null pointer") : std::to_string(workspace_size)));
    }
    if (!aligned(workspace, kWorkspaceAlignment)) {
      return Status(StatusCode::kMisalignedPointer, "workspace must be 256-byte aligned");
    }
  }
  // What the call writes (C, the workspace) must not overlap what it reads, nor each other.
  const unsigned long long m = args.m, n = args.n, k = args.k, groups = k / unsigned(args.group_size);
  auto at = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  const Region inputs[] = {{"a", at(args.a), 2 * m * k},
                           {"packed_weights", at(args.packed_weights), n * k / 2},
                           {"scales", at(args.scales), 2 * groups * n},
                           {"zeros", at(args.zeros), 2 * groups * n},
                           {"bias", at(args.bias), 2 * n},
                           {"k_permutation", at(args.k_permutation), 4 * k}};
  const Region c{"c", at(args.c), 2 * m * n};
  const Region scratch{"workspace", at(workspace), required};
  for (const Region& output : {c, scratch}) {
    for (const Region& input : inputs) {
      if (overlap(output, input)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(output.name) + " overlaps " + input.name + " (outputs must not alias inputs)");
      }
    }
  }
  if (overlap(c, scratch)) return Status(StatusCode::kInvalidArgument, "c overlaps the workspace");
  return Status::success();
}

long long grouped_m_slots(long long rows, long long experts, int tile_m) {
  return rows / tile_m + std::min(experts, rows);
}

Status check_grouped_arguments(const GroupedGemmArguments& args, const KernelConfig& config) {
  if (Status s = check_element(args.element); !s.ok()) return s;
  if (args.a == nullptr || args.packed_weights == nullptr || args.scales == nullptr || args.c == nullptr ||
      args.expert_offsets == nullptr) {
    return Status(StatusCode::kInvalidArgument, "a, packed_weights, scales, c and expert_offsets must not be null");
  }
  if (args.experts < 1 || args.experts > kMaxExperts) {
    return Status(StatusCode::kInvalidArgument,
                  "experts must be in 1 .. " + std::to_string(kMaxExperts) + ", got " + std::to_string(args.experts));
  }
  if (args.rows < 0 || args.n <= 0 || args.k <= 0) {
    return Status(StatusCode::kInvalidArgument, "rows must be >= 0 and n, k positive, got rows = " +
                                                    std::to_string(args.rows) + ", n = " + std::to_string(args.n) +
                                                    ", k = " + std::to_string(args.k));
  }
  if (Status s = check_layer_rules(args.n, args.k, args.group_size, args.alpha, args.float_zeros, args.zeros); !s.ok()) return s;
  if (!config.fused() || config.split_k != 1) {
    return Status(StatusCode::kInvalidArgument,
                  "grouped_gemm takes a fused config without split-K (see grouped_configs()), got " + config.name());
  }
  // A config without a tile shape: what default_grouped_config() returns on a build or device with
  // no grouped kernel at all (the tile counts below divide by the tile).
  if (config.tile_m <= 0 || config.tile_n <= 0) {
    return Status(StatusCode::kUnsupportedArch,
                  "no grouped kernel for this device in this build (grouped_configs() is empty), or a config "
                  "without a tile shape");
  }
  const struct {
    const void* pointer;
    const char* name;
    size_t alignment;
  } pointers[] = {{args.a, "a", kPointerAlignment},
                  {args.packed_weights, "packed_weights", kPointerAlignment},
                  {args.scales, "scales", kPointerAlignment},
                  {args.zeros, "zeros", kPointerAlignment},
                  {args.bias, "bias", kPointerAlignment},
                  {args.c, "c", kPointerAlignment},
                  {args.expert_offsets, "expert_offsets", 4},
                  {args.row_weights, "row_weights", 4}};
  for (const auto& p : pointers) {
    if (p.pointer != nullptr && !aligned(p.pointer, p.alignment)) {
      return Status(StatusCode::kMisalignedPointer,
                    std::string(p.name) + " must be " + std::to_string(p.alignment) + "-byte aligned");
    }
  }
  const long long n_tiles = (static_cast<long long>(args.n) + config.tile_n - 1) / config.tile_n;
  if (grouped_m_slots(args.rows, args.experts, config.tile_m) * n_tiles > kMaxOutputTiles) {
    return Status(StatusCode::kUnsupportedShape, "rows x n = " + std::to_string(args.rows) + " x " +
                                                     std::to_string(args.n) + " with " + std::to_string(args.experts) +
                                                     " experts needs more than 2^31 - 1 blocks for config " +
                                                     config.name());
  }
  // The warp-specialized grouped kernels address the stacked weights and scales through TMA,
  // whose coordinates are 32-bit.
  if (config.family == KernelFamily::kWarpSpecialized &&
      (static_cast<long long>(args.experts) * args.n > kMaxOutputTiles ||
       static_cast<long long>(args.experts) * (args.k / args.group_size) > kMaxOutputTiles)) {
    return Status(StatusCode::kUnsupportedShape, "experts x n = " + std::to_string(args.experts) + " x " +
                                                     std::to_string(args.n) + " (or experts x k / group) exceeds 2^31 - 1 for the warp-specialized "
                                                     "grouped kernels; use a multistage or streaming config");
  }
  // Everything below 2^63: experts <= 2^16, n and k < 2^31.
  const unsigned long long rows = args.rows, experts = args.experts, n = args.n, k = args.k,
                           groups = k / unsigned(args.group_size);
  auto at = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  const Region inputs[] = {{"a", at(args.a), 2 * rows * k},
                           {"packed_weights", at(args.packed_weights), experts * n * k / 2},
                           {"scales", at(args.scales), 2 * experts * groups * n},
                           {"zeros", at(args.zeros), 2 * experts * groups * n},
                           {"bias", at(args.bias), 2 * experts * n},
                           {"expert_offsets", at(args.expert_offsets), 4 * (experts + 1)},
                           {"row_weights", at(args.row_weights), 4 * rows}};
  const Region c{"c", at(args.c), 2 * rows * n};
  for (const Region& input : inputs) {
    if (overlap(c, input)) {
      return Status(StatusCode::kInvalidArgument,
                    std::string("c overlaps ") + input.name + " (outputs must not alias inputs)");
    }
  }
  return Status::success();
}

}  // namespace w4a16
