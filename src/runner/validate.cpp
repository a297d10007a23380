// The device-free argument rules of the runner (see validate.h).
#include "runner/validate.h"

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

Status check_arguments(const GemmArguments& args, const KernelConfig& config, const void* workspace,
                       size_t workspace_size) {
  if (args.element != ElementType::kFloat16 && args.element != ElementType::kBFloat16) {
    return Status(StatusCode::kInvalidArgument,
                  "element must be ElementType::kFloat16 or kBFloat16, got " + std::to_string(int(args.element)));
  }
  if (args.a == nullptr || args.packed_weights == nullptr || args.scales == nullptr || args.c == nullptr) {
    return Status(StatusCode::kInvalidArgument, "a, packed_weights, scales and c must not be null");
  }
  if (args.m <= 0 || args.n <= 0 || args.k <= 0) {
    return Status(StatusCode::kInvalidArgument, "m, n and k must be positive, got " + std::to_string(args.m) + " x " +
                                                     std::to_string(args.n) + " x " + std::to_string(args.k));
  }
  if (args.n % 16 != 0 || args.k % 64 != 0) {
    return Status(StatusCode::kUnsupportedShape, "n must be a multiple of 16 and k of 64, got n = " +
                                                     std::to_string(args.n) + ", k = " + std::to_string(args.k));
  }
  if (Status s = check_group_size(args.k, args.group_size); !s.ok()) return s;
  if (!std::isfinite(args.alpha)) return Status(StatusCode::kInvalidArgument, "alpha must be finite");
  if (args.float_zeros && args.zeros == nullptr) {
    return Status(StatusCode::kInvalidArgument, "float_zeros is set but zeros is null (float_zeros describes the zero points)");
  }
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

}  // namespace w4a16
