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

}  // namespace
}  // namespace w4a16
