// MoE host side (w4a16/moe.h): routing by counting sort, experts packed back to back, and the
// grouped reference against a direct double-precision sum over the dequantized weights.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "runner/heuristics.h"
#include "runner/validate.h"
#include "test_util.h"
#include "w4a16/moe.h"
#include "w4a16/quantize.h"

namespace w4a16 {
namespace {

using test::Random;

// top_k distinct experts per token; with `skew`, expert 0 is in every token's choice (one expert
// takes every token) and the last expert is never chosen (an expert with no rows).
std::vector<int32_t> random_choices(Random& rng, int tokens, int top_k, int experts, bool skew) {
  std::vector<int32_t> ids(size_t(tokens) * top_k);
  std::vector<int32_t> pool(experts);
  std::iota(pool.begin(), pool.end(), 0);
  for (int t = 0; t < tokens; ++t) {
    std::shuffle(pool.begin(), pool.end() - (skew ? 1 : 0), rng.engine());
    if (skew) std::iter_swap(pool.begin(), std::find(pool.begin(), pool.end(), 0));
    for (int c = 0; c < top_k; ++c) ids[size_t(t) * top_k + c] = pool[size_t(c)];
  }
  return ids;
}

TEST(MoeRouting, SortsEveryChoiceByExpertStably) {
  W4A16_RANDOM(rng);
  for (const auto& [tokens, top_k, experts, skew] :
       std::vector<std::tuple<int, int, int, bool>>{{1, 1, 8, false}, {17, 2, 8, false}, {300, 8, 128, false},
                                                    {64, 2, 8, true}, {5000, 1, 64, true}}) {
    SCOPED_TRACE(testing::Message() << tokens << " tokens, top-" << top_k << " of " << experts << (skew ? ", skewed" : ""));
    const std::vector<int32_t> ids = random_choices(rng, tokens, top_k, experts, skew);
    std::vector<float> weights(ids.size());
    for (float& w : weights) w = rng.uniform(0.0f, 1.0f);
    ExpertRouting routing;
    W4A16_ASSERT_OK(route_tokens(ids.data(), weights.data(), tokens, top_k, experts, &routing));
    ASSERT_EQ(routing.expert_offsets.size(), size_t(experts) + 1);
    EXPECT_EQ(routing.expert_offsets.front(), 0);
    EXPECT_EQ(routing.expert_offsets.back(), tokens * top_k);
    // Each expert's segment: exactly the tokens that chose it, in token order, with their weights.
    for (int e = 0; e < experts; ++e) {
      std::vector<int32_t> expected_rows;
      std::vector<float> expected_weights;
      for (int t = 0; t < tokens; ++t)
        for (int c = 0; c < top_k; ++c)
          if (ids[size_t(t) * top_k + c] == e) {
            expected_rows.push_back(t);
            expected_weights.push_back(weights[size_t(t) * top_k + c]);
          }
      const int begin = routing.expert_offsets[size_t(e)], end = routing.expert_offsets[size_t(e) + 1];
      ASSERT_EQ(end - begin, int(expected_rows.size())) << "expert " << e;
      EXPECT_EQ(routing.rows_of(e), end - begin);
      EXPECT_TRUE(std::equal(expected_rows.begin(), expected_rows.end(), routing.source_rows.begin() + begin));
      EXPECT_TRUE(std::equal(expected_weights.begin(), expected_weights.end(), routing.choice_weights.begin() + begin));
    }
    if (skew) {
      EXPECT_EQ(routing.rows_of(0), tokens);
      EXPECT_EQ(routing.rows_of(experts - 1), 0);
    }
  }
}

TEST(MoeRouting, RejectsBadChoices) {
  const int32_t ids[] = {0, 1, 2, 2};
  const float weights[] = {1, 1, NAN, 1};
  ExpertRouting routing;
  W4A16_EXPECT_CODE(route_tokens(ids, nullptr, 2, 2, 2, &routing), StatusCode::kInvalidArgument);  // expert 2 of 2
  W4A16_EXPECT_CODE(route_tokens(ids, nullptr, 2, 2, 3, &routing), StatusCode::kInvalidArgument);  // 2 twice
  W4A16_EXPECT_OK(route_tokens(ids, weights, 1, 2, 3, &routing));  // the first token alone is fine
  W4A16_EXPECT_CODE(route_tokens(ids + 1, weights + 1, 1, 2, 3, &routing), StatusCode::kInvalidArgument);  // NaN
  W4A16_EXPECT_CODE(route_tokens(ids, nullptr, 0, 1, 3, &routing), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(route_tokens(ids, nullptr, 1, 4, 3, &routing), StatusCode::kInvalidArgument);  // top_k > E
  W4A16_EXPECT_CODE(route_tokens(nullptr, nullptr, 1, 1, 3, &routing), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(route_tokens(ids, nullptr, std::numeric_limits<int>::max(), 2, 3, &routing),
                    StatusCode::kInvalidArgument);  // tokens * top_k >= 2^31
}

std::vector<QuantizedWeights> random_experts(Random& rng, int experts, int n, int k, int group, Format format) {
  std::vector<QuantizedWeights> out(experts);
  for (QuantizedWeights& w : out) {
    const std::vector<float> values = rng.weights(n, k);
    EXPECT_TRUE(test::IsOk(quantize(values.data(), n, k, QuantizeOptions{group, format.element, format.quant}, &w)));
  }
  return out;
}

TEST(MoePacking, ExpertsBackToBack) {
  W4A16_RANDOM(rng);
  const int n = 80, k = 192, group = 64;
  const Format format{ElementType::kBFloat16, QuantOp::kScaleAndZeros};
  const std::vector<QuantizedWeights> experts = random_experts(rng, 3, n, k, group, format);
  PackedExperts packed;
  W4A16_ASSERT_OK(pack_experts(experts, &packed));
  EXPECT_EQ(packed.experts, 3);
  EXPECT_EQ(packed.format, format);
  const size_t expert_bytes = packed_weight_bytes(n, k), group_values = size_t(k / group) * n;
  ASSERT_EQ(packed.packed.size(), 3 * expert_bytes);
  ASSERT_EQ(packed.scales.size(), 3 * group_values);
  ASSERT_EQ(packed.zeros.size(), 3 * group_values);
  for (size_t e = 0; e < 3; ++e) {
    std::vector<uint8_t> one;
    W4A16_ASSERT_OK(pack_weights(experts[e], &one));
    EXPECT_TRUE(std::equal(one.begin(), one.end(), packed.packed.begin() + e * expert_bytes)) << "expert " << e;
    EXPECT_TRUE(std::equal(experts[e].scales.begin(), experts[e].scales.end(), packed.scales.begin() + e * group_values));
    EXPECT_TRUE(std::equal(experts[e].zeros.begin(), experts[e].zeros.end(), packed.zeros.begin() + e * group_values));
  }
  std::vector<QuantizedWeights> mixed = experts;
  mixed[1] = random_experts(rng, 1, n, k, 32, format)[0];
  W4A16_EXPECT_CODE(pack_experts(mixed, &packed), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(pack_experts({}, &packed), StatusCode::kInvalidArgument);
}

// The grouped product and the combine against sums written out here, over every format.
TEST(MoeReference, MatchesADirectSum) {
  W4A16_RANDOM(rng);
  const int n = 48, k = 128, group = 32, experts = 6, tokens = 23, top_k = 2;
  for (const Format& format : kAllFormats) {
    SCOPED_TRACE(format_name(format));
    const std::vector<QuantizedWeights> weights = random_experts(rng, experts, n, k, group, format);
    const std::vector<int32_t> ids = random_choices(rng, tokens, top_k, experts, /*skew=*/true);
    std::vector<float> choice(ids.size());
    for (float& w : choice) w = rng.uniform(0.0f, 1.0f);
    ExpertRouting routing;
    W4A16_ASSERT_OK(route_tokens(ids.data(), choice.data(), tokens, top_k, experts, &routing));
    const std::vector<uint16_t> a = rng.elements(format.element, size_t(tokens) * k, -1.0f, 1.0f);
    const float alpha = rng.alpha();
    std::vector<double> sorted;
    W4A16_ASSERT_OK(reference_grouped_gemm(a.data(), weights, routing, alpha, {}, &sorted));
    ASSERT_EQ(sorted.size(), size_t(tokens) * top_k * n);
    std::vector<double> direct_tokens(size_t(tokens) * n, 0.0);
    for (int t = 0; t < tokens; ++t) {
      for (int c = 0; c < top_k; ++c) {
        const QuantizedWeights& w = weights[size_t(ids[size_t(t) * top_k + c])];
        for (int j = 0; j < n; ++j) {
          double sum = 0.0;
          for (int i = 0; i < k; ++i) sum += double(element_to_float(format.element, a[size_t(t) * k + i])) * w.dequantized(j, i);
          direct_tokens[size_t(t) * n + j] += double(choice[size_t(t) * top_k + c]) * double(alpha) * sum;
        }
      }
    }
    // Each sorted row is its (token, expert) product: the combine must give the direct sums
    // (up to the order of one addition of two doubles per token and channel).
    std::vector<double> combined;
    W4A16_ASSERT_OK(combine_routed_rows(sorted, n, routing, &combined));
    double worst = 0.0;
    for (size_t i = 0; i < combined.size(); ++i) {
      worst = std::max(worst, std::fabs(combined[i] - direct_tokens[i]) / (1.0 + std::fabs(direct_tokens[i])));
    }
    EXPECT_LT(worst, 1e-12);
    // A sample of positions, in a given order, equals the same rows of the full result.
    const std::vector<int> sample = {routing.positions() - 1, 0, routing.positions() / 2};
    std::vector<double> sampled;
    W4A16_ASSERT_OK(reference_grouped_gemm(a.data(), weights, routing, alpha, sample, &sampled));
    for (size_t s = 0; s < sample.size(); ++s) {
      EXPECT_TRUE(std::equal(sampled.begin() + s * n, sampled.begin() + (s + 1) * n, sorted.begin() + size_t(sample[s]) * n));
    }
    W4A16_EXPECT_CODE(reference_grouped_gemm(a.data(), weights, routing, alpha, {routing.positions()}, &sampled),
                      StatusCode::kInvalidArgument);
    std::vector<QuantizedWeights> fewer(weights.begin(), weights.end() - 1);
    W4A16_EXPECT_CODE(reference_grouped_gemm(a.data(), fewer, routing, alpha, {}, &sampled), StatusCode::kInvalidArgument);
  }
}

// The grouped grid's m-slots bound the (expert, m-tile) pairs of any routing: random, skewed,
// every row on one expert, one row per expert.
TEST(MoeGroupedRules, MSlotsCoverEveryRouting) {
  W4A16_RANDOM(rng);
  for (int trial = 0; trial < 2000; ++trial) {
    const int experts = rng.uniform_int(1, 300), tile_m = std::vector<int>{8, 16, 32, 64, 128}[size_t(rng.uniform_int(0, 4))];
    const int rows = rng.uniform_int(0, 3000);
    std::vector<long long> per_expert(size_t(experts), 0);
    const int mode = rng.uniform_int(0, 2);
    for (int r = 0; r < rows; ++r) {
      const int e = mode == 0 ? rng.uniform_int(0, experts - 1) : mode == 1 ? 0 : r % experts;
      ++per_expert[size_t(e)];
    }
    long long tiles = 0;
    for (long long count : per_expert) tiles += (count + tile_m - 1) / tile_m;
    ASSERT_LE(tiles, grouped_m_slots(rows, experts, tile_m)) << experts << " experts, " << rows << " rows, tile " << tile_m;
  }
}

// check_grouped_arguments on addresses that are never dereferenced: each rule gives its code.
TEST(MoeGroupedRules, ArgumentRules) {
  auto address = [](uintptr_t at) { return reinterpret_cast<void*>(at); };
  GroupedGemmArguments good;
  good.a = address(0x10000000);
  good.packed_weights = address(0x20000000);
  good.scales = address(0x30000000);
  good.c = address(0x40000000);
  good.expert_offsets = static_cast<const int32_t*>(address(0x50000000));
  good.experts = 8;
  good.rows = 100;
  good.n = 256;
  good.k = 512;
  KernelConfig config;
  ASSERT_TRUE(parse_kernel_config("ms_m128n128_w2x2x1_s4_k1", &config));
  W4A16_EXPECT_OK(check_grouped_arguments(good, config));
  struct Case {
    const char* name;
    void (*change)(GroupedGemmArguments&);
    StatusCode code;
  };
  const Case cases[] = {
      {"element", [](GroupedGemmArguments& a) { a.element = static_cast<ElementType>(7); }, StatusCode::kInvalidArgument},
      {"null c", [](GroupedGemmArguments& a) { a.c = nullptr; }, StatusCode::kInvalidArgument},
      {"null offsets", [](GroupedGemmArguments& a) { a.expert_offsets = nullptr; }, StatusCode::kInvalidArgument},
      {"0 experts", [](GroupedGemmArguments& a) { a.experts = 0; }, StatusCode::kInvalidArgument},
      {"65537 experts", [](GroupedGemmArguments& a) { a.experts = 65537; }, StatusCode::kInvalidArgument},
      {"negative rows", [](GroupedGemmArguments& a) { a.rows = -3; }, StatusCode::kInvalidArgument},
      {"n 0", [](GroupedGemmArguments& a) { a.n = 0; }, StatusCode::kInvalidArgument},
      {"n % 16", [](GroupedGemmArguments& a) { a.n = 264; }, StatusCode::kUnsupportedShape},
      {"k % 64", [](GroupedGemmArguments& a) { a.k = 544; }, StatusCode::kUnsupportedShape},
      {"group 48", [](GroupedGemmArguments& a) { a.group_size = 48; }, StatusCode::kUnsupportedGroupSize},
      {"alpha inf", [](GroupedGemmArguments& a) { a.alpha = INFINITY; }, StatusCode::kInvalidArgument},
      {"float zeros alone", [](GroupedGemmArguments& a) { a.float_zeros = true; }, StatusCode::kInvalidArgument},
      {"misaligned bias", [](GroupedGemmArguments& a) { a.bias = reinterpret_cast<void*>(0x60000008); },
       StatusCode::kMisalignedPointer},
      {"misaligned row weights", [](GroupedGemmArguments& a) { a.row_weights = reinterpret_cast<const float*>(0x60000002); },
       StatusCode::kMisalignedPointer},
      {"too many blocks", [](GroupedGemmArguments& a) { a.rows = 2000000000; a.n = 1 << 20; }, StatusCode::kUnsupportedShape},
      {"c inside the weights", [](GroupedGemmArguments& a) { a.c = reinterpret_cast<void*>(0x20000000 + 8 * 256 * 512 / 2 - 16); },
       StatusCode::kInvalidArgument},
      {"c over the offsets", [](GroupedGemmArguments& a) { a.c = reinterpret_cast<void*>(0x50000000 - 64); },
       StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    GroupedGemmArguments args = good;
    c.change(args);
    W4A16_EXPECT_CODE(check_grouped_arguments(args, config), c.code) << c.name;
  }
  // C just past the weights of the last expert is fine; split-K and dequant_cublas are not.
  GroupedGemmArguments adjacent = good;
  adjacent.c = address(0x20000000 + 8 * 256 * 512 / 2);
  W4A16_EXPECT_OK(check_grouped_arguments(adjacent, config));
  KernelConfig split = config;
  split.split_k = 2;
  W4A16_EXPECT_CODE(check_grouped_arguments(good, split), StatusCode::kInvalidArgument);
  KernelConfig dequant;
  dequant.family = KernelFamily::kDequantCublas;
  W4A16_EXPECT_CODE(check_grouped_arguments(good, dequant), StatusCode::kInvalidArgument);
  // What default_grouped_config() returns when no grouped kernel exists: a config without a tile
  // shape, refused with a status (it used to reach a division by the tile width).
  W4A16_EXPECT_CODE(check_grouped_arguments(good, KernelConfig{}), StatusCode::kUnsupportedArch);
  W4A16_EXPECT_CODE(check_grouped_arguments(good, heuristics::choose_grouped(100, 8, 256, 512, {90, 132}, {})),
                    StatusCode::kUnsupportedArch);
}

// The grouped heuristic picks from the list it is given: streaming tiles while experts see 16 rows
// or fewer on average, the multistage table's tile above; the first listed config when none of
// its choices is there.
TEST(MoeGroupedRules, HeuristicPicksAListedTileByRowsPerExpert) {
  std::vector<KernelConfig> available;
  for (const char* name : {"st_m8n64_w1x1x8_s3_k1", "st_m8n32_w1x1x8_s3_k1", "st_m16n64_w1x1x8_s4_k1",
                           "st_m16n32_w1x1x8_s4_k1", "ms_m32n128_w1x4x2_s4_k1", "ms_m64n128_w1x4x1_s4_k1",
                           "ms_m128n128_w2x2x1_s4_k1"}) {
    KernelConfig config;
    ASSERT_TRUE(parse_kernel_config(name, &config)) << name;
    available.push_back(config);
  }
  // An sm_80 part with these tiles (the sm_90 rules, which prefer the wgmma tiles, come below).
  const heuristics::DeviceTraits a100{80, 108}, h200{90, 132};
  auto pick = [&](int rows, int experts, int k) { return heuristics::choose_grouped(rows, experts, 4096, k, a100, available).name(); };
  EXPECT_EQ(pick(2, 8, 4096), "st_m8n64_w1x1x8_s3_k1");       // Mixtral, 1 token, top-2
  EXPECT_EQ(pick(8, 128, 2048), "st_m8n64_w1x1x8_s3_k1");     // 1 token, top-8 of 128
  EXPECT_EQ(pick(32, 8, 4096), "st_m8n64_w1x1x8_s3_k1");      // 16 tokens, top-2: 4 rows per expert
  EXPECT_EQ(pick(48, 8, 4096), "st_m16n64_w1x1x8_s4_k1");     // 6 rows per expert (no wgmma tiles listed)
  EXPECT_EQ(pick(128, 8, 4096), "ms_m32n128_w1x4x2_s4_k1");   // 64 tokens, top-2: 16 (room for 32)
  EXPECT_EQ(pick(1024, 8, 4096), "ms_m128n128_w2x2x1_s4_k1");  // 512 tokens, top-2
  EXPECT_EQ(pick(4096, 128, 2048), "ms_m64n128_w1x4x1_s4_k1");  // 512 tokens, top-8: 32 rows per expert
  EXPECT_EQ(pick(0, 8, 4096), "st_m8n64_w1x1x8_s3_k1");  // as for one row
  for (int rows : {1, 7, 100, 5000, 40000})
    for (int experts : {1, 8, 128, 300}) {
      for (const heuristics::DeviceTraits& device : {a100, h200}) {
        const KernelConfig got = heuristics::choose_grouped(rows, experts, 2048, 1536, device, available);
        EXPECT_NE(std::find(available.begin(), available.end(), got), available.end()) << rows << " " << experts;
      }
    }
  // On sm_90 with the warp-specialized grouped tiles listed, they take over above 8 rows.
  std::vector<KernelConfig> hopper = available;
  for (const char* name : {"ws_m32n128_w1x8x1_s6_k1", "ws_m64n128_w1x8x1_s4_k1", "ws_m128n128_w1x8x1_s5_k1",
                           "ws_m128n256_w1x8x1_s4_k1"}) {
    KernelConfig config;
    if (parse_kernel_config(name, &config)) hopper.push_back(config);
  }
  auto pick_hopper = [&](int rows, int experts, int k = 4096) {
    return heuristics::choose_grouped(rows, experts, 4096, k, h200, hopper).name();
  };
  EXPECT_EQ(pick_hopper(128, 8), "ws_m32n128_w1x8x1_s6_k1");
  EXPECT_EQ(pick_hopper(32, 8), "st_m8n64_w1x1x8_s3_k1");          // 4 rows per expert, k 4096
  EXPECT_EQ(pick_hopper(128, 128, 2048), "ws_m32n128_w1x8x1_s6_k1");  // 16 tokens of 128 experts, short k
  EXPECT_EQ(pick_hopper(8, 128, 2048), "st_m8n64_w1x1x8_s3_k1");     // one token of them
  EXPECT_EQ(pick_hopper(1024, 8), "ws_m128n128_w1x8x1_s5_k1");  // 128 rows per expert
  EXPECT_EQ(pick_hopper(8192, 8), "ws_m128n256_w1x8x1_s4_k1");
  EXPECT_EQ(pick_hopper(48, 8), "ws_m32n128_w1x8x1_s6_k1");   // 6 rows per expert
  hopper.pop_back();  // without the 256-channel tile: the 128-channel one
  EXPECT_EQ(pick_hopper(8192, 8), "ws_m128n128_w1x8x1_s5_k1");
  EXPECT_EQ(pick_hopper(2, 8), "st_m8n64_w1x1x8_s3_k1");
  EXPECT_EQ(heuristics::choose_grouped(1024, 8, 4096, 4096, a100, hopper).name(), "ms_m128n128_w2x2x1_s4_k1");
  const std::vector<KernelConfig> only_one = {available[5]};
  EXPECT_EQ(heuristics::choose_grouped(2, 8, 4096, 4096, h200, only_one), available[5]);
}

}  // namespace
}  // namespace w4a16
