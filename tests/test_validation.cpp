// The runner's device-free argument rules (runner/validate.h) against an independent statement of
// the documented rules (README, include/w4a16/runner.h), over tens of thousands of random
// argument sets: valid ones, and ones with one or two rules broken. Pointers are made-up
// addresses (the rules never dereference them), laid out far apart unless a case makes two
// buffers overlap.
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runner/validate.h"
#include "test_util.h"

namespace w4a16 {
namespace {

using test::Random;

struct Case {
  GemmArguments args;
  KernelConfig config;
  uintptr_t workspace = 0;
  size_t workspace_bytes = 0;
};

// The documented rules, restated: the first one broken, in the documented order.
StatusCode expected_code(const Case& c) {
  const GemmArguments& a = c.args;
  if (a.element != ElementType::kFloat16 && a.element != ElementType::kBFloat16) return StatusCode::kInvalidArgument;
  if (!a.a || !a.packed_weights || !a.scales || !a.c) return StatusCode::kInvalidArgument;
  if (a.m < 1 || a.n < 1 || a.k < 1) return StatusCode::kInvalidArgument;
  if (a.n % 16 || a.k % 64) return StatusCode::kUnsupportedShape;
  const bool group_ok = (a.group_size == 32 || a.group_size == 64 || a.group_size == 128 || a.group_size == a.k) &&
                        a.group_size > 0 && a.k % a.group_size == 0;
  if (!group_ok) return StatusCode::kUnsupportedGroupSize;
  if (std::isnan(a.alpha) || std::isinf(a.alpha)) return StatusCode::kInvalidArgument;
  if (a.float_zeros && !a.zeros) return StatusCode::kInvalidArgument;
  for (const void* p : {a.a, a.packed_weights, a.scales, a.zeros, a.bias, static_cast<const void*>(a.c),
                        static_cast<const void*>(a.k_permutation)}) {
    if (reinterpret_cast<uintptr_t>(p) & 15) return StatusCode::kMisalignedPointer;
  }
  const bool fused = c.config.family != KernelFamily::kDequantCublas;
  // cuBLASLt configs: c, and a unless act-order gathers it into the workspace, 256-byte aligned.
  if (!fused && c.config.dense_algorithm > 0 &&
      (((reinterpret_cast<uintptr_t>(a.a) & 255) && !a.k_permutation) || (reinterpret_cast<uintptr_t>(a.c) & 255))) {
    return StatusCode::kMisalignedPointer;
  }
  if (fused) {
    const double tiles = std::ceil(double(a.m) / c.config.tile_m) * std::ceil(double(a.n) / c.config.tile_n);
    if (tiles > 2147483647.0) return StatusCode::kUnsupportedShape;
    if (c.config.split_k * 64 > a.k) return StatusCode::kInvalidArgument;
  }
  // Workspace: fp32 partials of every split-K slice, or the dense weights (256-byte rounded) and
  // cuBLAS's 32 MiB.
  double needed = 0;
  if (!fused) needed = std::ceil(2.0 * a.n * a.k / 256) * 256 + 32.0 * 1024 * 1024;
  else if (c.config.split_k > 1) needed = 4.0 * c.config.split_k * a.m * double(a.n);
  // Act-order: the gathered copy of A (256-byte rounded) in front of the rest.
  if (a.k_permutation) needed += std::ceil(2.0 * a.m * a.k / 256) * 256;
  if (needed > 0) {
    if (c.workspace == 0 || double(c.workspace_bytes) < needed) return StatusCode::kWorkspaceTooSmall;
    if (c.workspace % 256) return StatusCode::kMisalignedPointer;
  }
  // Outputs against inputs, and C against the workspace.
  auto range = [](const void* p, double bytes) {
    return std::pair<double, double>{double(reinterpret_cast<uintptr_t>(p)), double(reinterpret_cast<uintptr_t>(p)) + bytes};
  };
  const double m = a.m, n = a.n, k = a.k, groups = k / a.group_size;
  const std::vector<std::pair<const void*, double>> inputs = {
      {a.a, 2 * m * k},  {a.packed_weights, n * k / 2}, {a.scales, 2 * groups * n}, {a.zeros, 2 * groups * n},
      {a.bias, 2 * n}, {a.k_permutation, 4 * k}};
  auto overlaps = [&](const void* p, double bytes, const void* q, double q_bytes) {
    if (!p || !q || bytes == 0 || q_bytes == 0) return false;
    const auto x = range(p, bytes), y = range(q, q_bytes);
    return x.first < y.second && y.first < x.second;
  };
  const void* workspace = reinterpret_cast<const void*>(c.workspace);
  for (const auto& [pointer, bytes] : inputs) {
    if (overlaps(a.c, 2 * m * n, pointer, bytes) || overlaps(workspace, needed, pointer, bytes)) {
      return StatusCode::kInvalidArgument;
    }
  }
  if (overlaps(a.c, 2 * m * n, workspace, needed)) return StatusCode::kInvalidArgument;
  return StatusCode::kSuccess;
}

// The configs a case picks from: a few of every family, split-K included.
std::vector<KernelConfig> some_configs() {
  std::vector<KernelConfig> configs;
  const struct {
    KernelFamily family;
    int tile_m, tile_n;
  } tiles[] = {{KernelFamily::kMultistage, 8, 16},  {KernelFamily::kMultistage, 128, 128},
               {KernelFamily::kStreaming, 8, 64},   {KernelFamily::kStreaming, 16, 32},
               {KernelFamily::kWarpSpecialized, 128, 256}, {KernelFamily::kWarpSpecialized, 32, 128}};
  for (const auto& t : tiles)
    for (int split : {1, 2, 16}) {
      KernelConfig c;
      c.family = t.family;
      c.tile_m = t.tile_m;
      c.tile_n = t.tile_n;
      c.warps_m = 1;
      c.warps_n = 4;
      c.warps_k = 1;
      c.stages = 4;
      c.split_k = split;
      configs.push_back(c);
    }
  KernelConfig dequant;
  dequant.family = KernelFamily::kDequantCublas;
  configs.push_back(dequant);
  dequant.dense_algorithm = 2;  // a cuBLASLt candidate: stricter alignment of a and c
  configs.push_back(dequant);
  return configs;
}

// A valid case: buffers 2^40 bytes apart (far more than any of them spans), 256-byte aligned.
Case valid_case(Random& rng, const std::vector<KernelConfig>& configs) {
  Case c;
  GemmArguments& a = c.args;
  const bool huge = rng.uniform_int(0, 19) == 0;
  a.m = huge ? rng.uniform_int(1, std::numeric_limits<int>::max()) : rng.uniform_int(1, 5000);
  a.n = 16 * (huge ? rng.uniform_int(1, std::numeric_limits<int>::max() / 16) : rng.uniform_int(1, 2048));
  a.k = 64 * (huge ? rng.uniform_int(1, 1 << 20) : rng.uniform_int(1, 512));
  const int groups[] = {32, 64, 128, a.k};
  do {
    a.group_size = groups[rng.uniform_int(0, 3)];
  } while (a.k % a.group_size != 0);
  a.alpha = rng.uniform(-4.0f, 4.0f);
  a.element = rng.coin() ? ElementType::kFloat16 : ElementType::kBFloat16;
  uintptr_t next = uintptr_t(1) << 44;
  auto place = [&] {
    next += uintptr_t(1) << 40;
    return reinterpret_cast<void*>(next);
  };
  a.a = place();
  a.packed_weights = place();
  a.scales = place();
  a.zeros = rng.coin() ? place() : nullptr;
  a.float_zeros = a.zeros && rng.coin();
  a.bias = rng.coin() ? place() : nullptr;
  a.c = place();
  a.k_permutation = rng.coin() ? static_cast<const int32_t*>(place()) : nullptr;
  c.config = configs[size_t(rng.uniform_int(0, int(configs.size()) - 1))];
  if (c.config.fused() && c.config.split_k * 64 > a.k) c.config.split_k = 1;
  const size_t needed = required_workspace_bytes(a, c.config);
  c.workspace = needed > 0 ? reinterpret_cast<uintptr_t>(place()) : 0;
  c.workspace_bytes = needed + size_t(rng.uniform_int(0, 1024));
  return c;
}

// Breaks one rule (or, rarely, makes two buffers overlap that a valid case keeps apart).
void break_a_rule(Random& rng, Case* c) {
  GemmArguments& a = c->args;
  auto shift = [](const void* p, long long bytes) {
    return reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + bytes);
  };
  switch (rng.uniform_int(0, 21)) {
    case 0: a.element = static_cast<ElementType>(rng.uniform_int(2, 255)); break;
    case 1: {
      const int which = rng.uniform_int(0, 3);
      if (which == 0) a.a = nullptr;
      if (which == 1) a.packed_weights = nullptr;
      if (which == 2) a.scales = nullptr;
      if (which == 3) a.c = nullptr;
      break;
    }
    case 2: a.m = -rng.uniform_int(0, 1000); break;
    case 3: a.n = rng.coin() ? -16 * rng.uniform_int(0, 10) : a.n + rng.uniform_int(1, 15); break;
    case 4: a.k = rng.coin() ? -64 * rng.uniform_int(0, 10) : a.k + 32 * rng.uniform_int(1, 1); break;
    case 5: a.group_size = rng.coin() ? rng.uniform_int(-64, 300) : 2 * a.k; break;
    case 6: a.alpha = rng.coin() ? std::numeric_limits<float>::quiet_NaN() : -std::numeric_limits<float>::infinity(); break;
    case 7: a.a = shift(a.a, 2 * rng.uniform_int(1, 7)); break;
    case 8: a.scales = shift(a.scales, 2 * rng.uniform_int(1, 7)); break;
    case 9: if (a.zeros) a.zeros = shift(a.zeros, 8); else a.bias = shift(a.bias ? a.bias : a.scales, 4); break;
    case 10: a.c = const_cast<void*>(shift(a.c, 2)); break;
    case 11: c->workspace_bytes = c->workspace_bytes > 2000 ? c->workspace_bytes - 2000 : 0; break;
    case 12: c->workspace = 0; break;
    case 13: c->workspace += 16 * rng.uniform_int(1, 15); break;
    case 14: a.c = const_cast<void*>(shift(a.a, 256 * rng.uniform_int(0, 4))); break;  // C over A
    case 15: a.c = const_cast<void*>(shift(a.scales, -256)); break;  // C's end over the scales
    case 16: c->workspace = reinterpret_cast<uintptr_t>(a.packed_weights) + 256; break;  // workspace over W
    case 17:
      c->config.split_k = 16;
      if (c->config.family == KernelFamily::kDequantCublas) c->config = some_configs()[2];
      a.k = 64 * rng.uniform_int(1, 15);
      a.group_size = a.k;
      break;
    case 18:  // a misaligned permutation, or one added where the workspace has no room for the gather
      if (a.k_permutation) a.k_permutation = static_cast<const int32_t*>(shift(a.k_permutation, 4 * rng.uniform_int(1, 3)));
      else a.k_permutation = static_cast<const int32_t*>(shift(a.a, std::int64_t(1) << 39));
      break;
    case 19:  // C over the permutation
      if (a.k_permutation) a.c = const_cast<void*>(shift(a.k_permutation, -256));
      break;
    case 20:  // float_zeros without zero points
      a.zeros = nullptr;
      a.float_zeros = true;
      break;
    case 21:  // a or c 16- but not 256-byte aligned: fine for every config but cuBLASLt's
      if (rng.coin()) a.a = shift(a.a, 16 * rng.uniform_int(1, 15));
      else a.c = const_cast<void*>(shift(a.c, 16 * rng.uniform_int(1, 15)));
      break;
  }
}

TEST(Validation, RandomArgumentsMatchTheDocumentedRules) {
  W4A16_RANDOM(rng);
  const std::vector<KernelConfig> configs = some_configs();
  int valid = 0, invalid = 0, mismatches = 0;
  std::map<StatusCode, int> seen;
  for (int i = 0; i < 20000; ++i) {
    Case c = valid_case(rng, configs);
    const int breaks = rng.uniform_int(0, 9) < 3 ? 0 : rng.uniform_int(1, 2);
    for (int b = 0; b < breaks; ++b) break_a_rule(rng, &c);
    const StatusCode want = expected_code(c);
    const Status got = check_arguments(c.args, c.config, reinterpret_cast<const void*>(c.workspace), c.workspace_bytes);
    ++seen[got.code()];
    (want == StatusCode::kSuccess ? valid : invalid)++;
    if (got.code() != want && mismatches++ < 10) {
      ADD_FAILURE() << "case " << i << ": m " << c.args.m << " n " << c.args.n << " k " << c.args.k << " group "
                    << c.args.group_size << " " << c.config.name() << ": expected " << to_string(want) << ", got "
                    << got.to_string();
    }
    if (!got.ok()) {
      EXPECT_FALSE(got.message().empty());
    }
  }
  EXPECT_EQ(mismatches, 0);
  // Every rule fired at least once, and valid cases were among them.
  for (StatusCode code : {StatusCode::kSuccess, StatusCode::kInvalidArgument, StatusCode::kUnsupportedShape,
                          StatusCode::kUnsupportedGroupSize, StatusCode::kMisalignedPointer,
                          StatusCode::kWorkspaceTooSmall}) {
    EXPECT_GT(seen[code], 50) << to_string(code);
  }
  std::printf("%d valid, %d invalid cases\n", valid, invalid);
}

}  // namespace
}  // namespace w4a16
