// GPU tests of the grouped (mixture-of-experts) GEMM: every grouped config in every format against
// the CPU reference, the routings the issue names (E 8 / 64 / 128 and beyond one scheduler sweep,
// top-k 1 / 2 / 8, 1 .. 5000 tokens, experts without rows, one expert with every row), repeats,
// graph replays with new routing, broken offsets and bad arguments. Skips without a device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "runner/validate.h"
#include "test_util.h"
#include "w4a16/moe.h"
#include "w4a16/w4a16.h"

namespace w4a16 {
namespace {

using test::DeviceArray;
using test::Random;

// How the tokens choose their experts.
enum class Routing {
  kRandom,     // top_k distinct experts per token, uniformly
  kSkewed,     // expert 0 in every token's choice, the last expert never (an expert with no rows);
               // needs top_k < experts
  kOneExpert,  // top-1, every token to expert experts / 2: one expert has every row
};

std::vector<int32_t> choose_experts(Random& rng, int tokens, int top_k, int experts, Routing routing) {
  EXPECT_TRUE(routing != Routing::kSkewed || top_k < experts) << "skewed routing needs top_k < experts";
  std::vector<int32_t> ids(size_t(tokens) * top_k);
  std::vector<int32_t> pool(experts);
  std::iota(pool.begin(), pool.end(), 0);
  for (int t = 0; t < tokens; ++t) {
    if (routing == Routing::kOneExpert) {
      ids[size_t(t)] = experts / 2;
      continue;
    }
    const bool skew = routing == Routing::kSkewed;
    // Partial Fisher-Yates: the first top_k of the pool (without the last expert when skewed).
    const int choosable = experts - (skew ? 1 : 0);
    for (int c = 0; c < top_k; ++c) std::swap(pool[size_t(c)], pool[size_t(rng.uniform_int(c, choosable - 1))]);
    // Skewed: expert 0 is among the choices (swapped in for the first if it was not drawn).
    if (skew) {
      const auto zero = std::find(pool.begin(), pool.end(), 0);
      if (zero - pool.begin() >= top_k) std::iter_swap(pool.begin(), zero);
    }
    for (int c = 0; c < top_k; ++c) ids[size_t(t) * top_k + c] = pool[size_t(c)];
  }
  return ids;
}

// E experts of one shape in one format, quantized from fresh random weights, packed back to back.
struct Experts {
  int experts = 0, n = 0, k = 0, group = 0;
  Format format;
  std::vector<QuantizedWeights> q;
  DeviceArray<uint8_t> packed;
  DeviceArray<uint16_t> scales, zeros, bias;
  std::vector<uint16_t> host_bias;
};

void make_experts(Random& rng, int experts, int n, int k, int group, Format format, Experts* out) {
  out->experts = experts;
  out->n = n;
  out->k = k;
  out->group = group;
  out->format = format;
  out->q.resize(size_t(experts));
  for (QuantizedWeights& w : out->q) {
    const std::vector<float> host = rng.weights(n, k);
    W4A16_ASSERT_OK(quantize(host.data(), n, k, QuantizeOptions{group, format.element, format.quant}, &w));
    // As the dense tests do: a third of the zero points move (fractions for the float-zeros op).
    for (uint16_t& zero : w.zeros) {
      if (rng.uniform_int(0, 2) != 0) continue;
      zero = format.quant == QuantOp::kScaleAndFloatZeros
                 ? float_to_element(format.element, element_to_float(format.element, zero) + 0.25f * rng.uniform_int(1, 3))
                 : float_to_element(format.element, float(rng.uniform_int(0, kMaxCode)));
    }
  }
  PackedExperts packed;
  W4A16_ASSERT_OK(pack_experts(out->q, &packed));
  ASSERT_NO_FATAL_FAILURE(out->packed.upload(packed.packed, 64));
  ASSERT_NO_FATAL_FAILURE(out->scales.upload(packed.scales, 64));
  if (!packed.zeros.empty()) {
    ASSERT_NO_FATAL_FAILURE(out->zeros.upload(packed.zeros, 64));
  }
  out->host_bias = rng.elements(format.element, size_t(experts) * n, -1.0f, 1.0f);
  ASSERT_NO_FATAL_FAILURE(out->bias.upload(out->host_bias, 64));
}

// One routed problem: tokens' activations, their routing, A sorted by expert, and C with poisoned
// guard zones on both sides (and `slack` rows past the routed ones, which must stay untouched).
struct Problem {
  static constexpr size_t kGuard = 4096;
  int tokens = 0, top_k = 0, rows = 0, slack = 0;
  float alpha = 1.0f;
  bool use_bias = false, use_row_weights = false;
  ExpertRouting routing;
  std::vector<uint16_t> tokens_a, sorted_a;
  DeviceArray<uint16_t> a, c;
  DeviceArray<int32_t> offsets;
  DeviceArray<float> row_weights;

  uint16_t* c_begin() const { return c.get() + kGuard; }

  GroupedGemmArguments arguments(const Experts& w) const {
    GroupedGemmArguments args;
    args.a = a.get();
    args.packed_weights = w.packed.get();
    args.scales = w.scales.get();
    args.zeros = has_zeros(w.format.quant) ? w.zeros.get() : nullptr;
    args.float_zeros = w.format.quant == QuantOp::kScaleAndFloatZeros;
    args.bias = use_bias ? w.bias.get() : nullptr;
    args.c = c_begin();
    args.expert_offsets = offsets.get();
    args.row_weights = use_row_weights ? row_weights.get() : nullptr;
    args.experts = w.experts;
    args.rows = rows;
    args.n = w.n;
    args.k = w.k;
    args.group_size = w.group;
    args.alpha = alpha;
    args.element = w.format.element;
    return args;
  }
};

// Routes `tokens` tokens and uploads the sorted rows; rows = tokens * top_k + slack.
void make_problem(Random& rng, const Experts& w, int tokens, int top_k, Routing how, int slack, Problem* p) {
  p->tokens = tokens;
  p->top_k = top_k;
  p->slack = slack;
  const std::vector<int32_t> ids = choose_experts(rng, tokens, top_k, w.experts, how);
  std::vector<float> choice_weights(ids.size());
  for (float& weight : choice_weights) weight = rng.uniform(0.0f, 1.0f);
  W4A16_ASSERT_OK(route_tokens(ids.data(), choice_weights.data(), tokens, top_k, w.experts, &p->routing));
  p->rows = p->routing.positions() + slack;
  p->tokens_a = rng.elements(w.format.element, size_t(tokens) * w.k, -1.0f, 1.0f);
  p->sorted_a.assign(size_t(p->rows) * w.k, float_to_element(w.format.element, 0.5f));
  for (int position = 0; position < p->routing.positions(); ++position) {
    const int token = p->routing.source_rows[size_t(position)];
    std::copy_n(p->tokens_a.begin() + size_t(token) * w.k, w.k, p->sorted_a.begin() + size_t(position) * w.k);
  }
  ASSERT_NO_FATAL_FAILURE(p->a.upload(p->sorted_a, 64));
  ASSERT_NO_FATAL_FAILURE(p->offsets.upload(p->routing.expert_offsets, 16));
  std::vector<float> weights = p->routing.choice_weights;
  weights.resize(size_t(p->rows), 1.0f);
  ASSERT_NO_FATAL_FAILURE(p->row_weights.upload(weights, 16));
  ASSERT_NO_FATAL_FAILURE(p->c.allocate(size_t(p->rows) * w.n + 2 * Problem::kGuard));
  ASSERT_NO_FATAL_FAILURE(p->c.fill_bytes(0xFF));
}

// The positions a check compares: all of them up to `full_limit` multiply-adds, else the first and
// last position of every expert that has rows plus a few random ones.
std::vector<int> check_positions(Random& rng, const Problem& p, const Experts& w, double full_limit = 3e8) {
  std::vector<int> positions;
  const int count = p.routing.positions();
  if (double(count) * w.n * w.k <= full_limit) {
    positions.resize(size_t(count));
    std::iota(positions.begin(), positions.end(), 0);
    return positions;
  }
  for (int e = 0; e < w.experts; ++e) {
    const int begin = p.routing.expert_offsets[size_t(e)], end = p.routing.expert_offsets[size_t(e) + 1];
    if (end > begin) positions.insert(positions.end(), {begin, end - 1});
  }
  for (int i = 0; i < 16; ++i) positions.push_back(rng.uniform_int(0, count - 1));
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  return positions;
}

// C against the reference at `positions`: every routed row matches, the guards and the slack rows
// still hold the poison.
void expect_matches(Random& rng, const Problem& p, const Experts& w, const std::string& what) {
  SCOPED_TRACE(what);
  std::vector<uint16_t> all;
  ASSERT_NO_FATAL_FAILURE(p.c.download(&all));
  const size_t routed = size_t(p.routing.positions()) * w.n;
  EXPECT_TRUE(test::all_bytes_equal(all.data(), Problem::kGuard * 2, 0xFF)) << "write before the start of C";
  EXPECT_TRUE(test::all_bytes_equal(all.data() + Problem::kGuard + routed, (size_t(p.slack) * w.n + Problem::kGuard) * 2,
                                    0xFF))
      << "write past the routed rows of C";
  const std::vector<uint16_t> c(all.begin() + Problem::kGuard, all.begin() + Problem::kGuard + routed);

  const std::vector<int> positions = check_positions(rng, p, w);
  std::vector<double> reference;
  W4A16_ASSERT_OK(reference_grouped_gemm(p.tokens_a.data(), w.q, p.routing, p.alpha, positions, &reference));
  // The bound's magnitude per position, from its expert's weights over the sorted rows.
  std::vector<double> magnitude(reference.size());
  std::vector<int> expert_of(size_t(p.routing.positions()));
  for (int e = 0; e < w.experts; ++e)
    for (int q = p.routing.expert_offsets[size_t(e)]; q < p.routing.expert_offsets[size_t(e) + 1]; ++q) expert_of[size_t(q)] = e;
  for (size_t i = 0; i < positions.size(); ++i) {
    const int position = positions[i], e = expert_of[size_t(position)];
    const std::vector<double> row_magnitude =
        test::reference_magnitude(p.sorted_a, p.rows, w.q[size_t(e)], p.alpha, {position});
    const double row_weight = p.use_row_weights ? p.routing.choice_weights[size_t(position)] : 1.0;
    for (int j = 0; j < w.n; ++j) {
      const size_t at = i * w.n + j;
      const double bias = p.use_bias ? element_to_float(w.format.element, w.host_bias[size_t(e) * w.n + j]) : 0.0;
      reference[at] = row_weight * (reference[at] + bias);
      magnitude[at] = row_weight * (row_magnitude[size_t(j)] + std::abs(bias));
    }
  }
  EXPECT_TRUE(test::matches_reference(w.format.element, c, p.routing.positions(), w.n, positions, reference, magnitude));
}

class Grouped : public ::testing::Test {
 protected:
  void SetUp() override {
    W4A16_REQUIRE_GPU();
    ASSERT_TRUE(runner_.status().ok()) << runner_.status().to_string();
    if (runner_.grouped_configs().empty()) GTEST_SKIP() << "this build has no grouped kernel for this device";
  }
  GemmRunner runner_;
};

std::string describe(const Experts& w, const Problem& p, const KernelConfig& config) {
  return test::format_tag(w.format) + " " + config.name() + ": " + std::to_string(w.experts) + " experts, " +
         std::to_string(p.tokens) + " tokens, top-" + std::to_string(p.top_k) + ", n " + std::to_string(w.n) + ", k " +
         std::to_string(w.k) + ", group " + std::to_string(w.group) + (p.use_bias ? ", bias" : "") +
         (p.use_row_weights ? ", row weights" : "") + ", alpha " + std::to_string(p.alpha);
}

TEST_F(Grouped, EveryConfigMatchesTheReferenceInEveryFormat) {
  W4A16_RANDOM(rng);
  for (const Format& format : kAllFormats) {
    for (const KernelConfig& config : runner_.grouped_configs()) {
      if (!test::family_selected(config.family)) continue;
      Experts w;
      const int experts = std::vector<int>{8, 64, 128}[size_t(rng.uniform_int(0, 2))];
      const int group = std::vector<int>{32, 64, 128}[size_t(rng.uniform_int(0, 2))];
      ASSERT_NO_FATAL_FAILURE(make_experts(rng, experts, 16 * rng.uniform_int(4, 12), 128 * rng.uniform_int(2, 4),
                                           group, format, &w));
      Problem p;
      const int top_k = std::vector<int>{1, 2, 8}[size_t(rng.uniform_int(0, 2))];
      // Tokens around the tile: an expert gets one m-tile, several, and partial ones.
      const int tokens = rng.uniform_int(1, std::max(2, 3 * config.tile_m * experts / top_k / 4));
      const Routing how = top_k < experts && rng.coin() ? Routing::kSkewed : Routing::kRandom;
      ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, tokens, top_k, how, rng.uniform_int(0, 3), &p));
      p.alpha = rng.alpha();
      p.use_bias = rng.coin();
      p.use_row_weights = rng.coin();
      W4A16_ASSERT_OK(runner_.grouped_gemm(p.arguments(w), config, nullptr));
      W4A16_ASSERT_CUDA(cudaDeviceSynchronize());
      ASSERT_NO_FATAL_FAILURE(expect_matches(rng, p, w, describe(w, p, config)));
    }
  }
}

// The routings of the issue's acceptance, through the default config: experts 8 / 64 / 128 (and
// 300, past one 256-expert sweep of the scheduler), top-k 1 / 2 / 8, 1 to 5000 tokens, random,
// skewed (an expert with no rows) and all rows on one expert.
TEST_F(Grouped, DefaultConfigOverTheRoutingsOfTheIssue) {
  W4A16_RANDOM(rng);
  struct Case {
    int experts, top_k, tokens;
    Routing routing;
  };
  const std::vector<Case> cases = {
      {8, 2, 1, Routing::kRandom},      {8, 2, 3, Routing::kSkewed},     {8, 1, 17, Routing::kRandom},
      {8, 2, 1000, Routing::kSkewed},   {8, 1, 5000, Routing::kOneExpert}, {8, 2, 5000, Routing::kRandom},
      {64, 8, 1, Routing::kRandom},     {64, 2, 64, Routing::kSkewed},   {64, 8, 512, Routing::kRandom},
      {64, 1, 3000, Routing::kOneExpert}, {128, 8, 1, Routing::kRandom},   {128, 8, 16, Routing::kRandom},
      {128, 8, 300, Routing::kSkewed},  {128, 1, 4096, Routing::kRandom}, {128, 8, 5000, Routing::kRandom},
      {300, 2, 700, Routing::kSkewed},  {300, 8, 17, Routing::kRandom},
  };
  for (const Case& c : cases) {
    const Format format = kAllFormats[size_t(rng.uniform_int(0, int(std::size(kAllFormats)) - 1))];
    Experts w;
    ASSERT_NO_FATAL_FAILURE(make_experts(rng, c.experts, 128, 256, 128, format, &w));
    Problem p;
    ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, c.tokens, c.top_k, c.routing, 0, &p));
    p.alpha = rng.alpha();
    p.use_bias = rng.coin();
    p.use_row_weights = true;
    const KernelConfig config = runner_.default_grouped_config(p.rows, w.experts, w.n, w.k);
    W4A16_ASSERT_OK(runner_.grouped_gemm(p.arguments(w), nullptr));
    W4A16_ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_NO_FATAL_FAILURE(expect_matches(rng, p, w, describe(w, p, config)));
  }
}

// Two runs of one problem give the same bits, for one config of each grouped family.
TEST_F(Grouped, RepeatsAreBitIdentical) {
  W4A16_RANDOM(rng);
  for (const KernelConfig& config : runner_.grouped_configs()) {
    if (config.tile_m != 8 && config.tile_m != 128) continue;  // the decode and the prefill end
    Experts w;
    ASSERT_NO_FATAL_FAILURE(make_experts(rng, 16, 256, 512, 64, kAllFormats[1], &w));
    Problem p;
    ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, 300, 2, Routing::kSkewed, 0, &p));
    p.use_row_weights = true;
    std::vector<uint16_t> first, second;
    W4A16_ASSERT_OK(runner_.grouped_gemm(p.arguments(w), config, nullptr));
    ASSERT_NO_FATAL_FAILURE(p.c.download(&first));
    ASSERT_NO_FATAL_FAILURE(p.c.fill_bytes(0xFF));
    W4A16_ASSERT_OK(runner_.grouped_gemm(p.arguments(w), config, nullptr));
    ASSERT_NO_FATAL_FAILURE(p.c.download(&second));
    EXPECT_TRUE(first == second) << config.name();
  }
}

// A graph captured once, replayed with routing that changes between replays (new offsets, rows and
// row weights written into the same buffers): every replay matches its own routing's reference.
TEST_F(Grouped, GraphReplaysFollowTheRoutingOnTheDevice) {
  W4A16_RANDOM(rng);
  Experts w;
  ASSERT_NO_FATAL_FAILURE(make_experts(rng, 64, 128, 256, 128, kAllFormats[4], &w));
  constexpr int kTokens = 200, kTopK = 8;
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, kTokens, kTopK, Routing::kRandom, 0, &p));
  p.use_row_weights = true;
  p.use_bias = true;
  cudaStream_t stream = nullptr;
  W4A16_ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  W4A16_ASSERT_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const Status captured = runner_.grouped_gemm(p.arguments(w), stream);
  W4A16_ASSERT_CUDA(cudaStreamEndCapture(stream, &graph));
  W4A16_ASSERT_OK(captured);
  W4A16_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 4; ++replay) {
    // A new routing of as many rows (replay 2 puts every token's first choice on one expert).
    Problem next;
    ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, kTokens, kTopK, replay == 2 ? Routing::kSkewed : Routing::kRandom, 0, &next));
    W4A16_ASSERT_CUDA(cudaMemcpyAsync(p.a.get(), next.sorted_a.data(), next.sorted_a.size() * 2, cudaMemcpyHostToDevice, stream));
    W4A16_ASSERT_CUDA(cudaMemcpyAsync(p.offsets.get(), next.routing.expert_offsets.data(),
                                      next.routing.expert_offsets.size() * 4, cudaMemcpyHostToDevice, stream));
    W4A16_ASSERT_CUDA(cudaMemcpyAsync(p.row_weights.get(), next.routing.choice_weights.data(),
                                      next.routing.choice_weights.size() * 4, cudaMemcpyHostToDevice, stream));
    W4A16_ASSERT_CUDA(cudaMemsetAsync(p.c.get(), 0xFF, p.c.bytes(), stream));
    W4A16_ASSERT_CUDA(cudaGraphLaunch(exec, stream));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream));
    p.routing = next.routing;
    p.sorted_a = next.sorted_a;
    p.tokens_a = next.tokens_a;
    ASSERT_NO_FATAL_FAILURE(expect_matches(rng, p, w, "replay " + std::to_string(replay)));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Offsets that break the contract (decreasing, negative, past rows) give unspecified values but no
// access outside A and C: the guards stay poisoned (and memcheck stays clean).
TEST_F(Grouped, BrokenOffsetsStayInsideTheBuffers) {
  W4A16_RANDOM(rng);
  Experts w;
  ASSERT_NO_FATAL_FAILURE(make_experts(rng, 8, 128, 256, 128, kAllFormats[0], &w));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, 40, 2, Routing::kRandom, 0, &p));
  const std::vector<std::vector<int32_t>> broken = {
      {0, 50, 10, 80, 80, 80, 80, 80, 80},          // decreasing
      {-100, 5, 9, 20, 30, 40, 50, 60, 80},         // negative first
      {0, 10, 20, 30, 40, 50, 60, 70, 100000},      // past rows
      {0, 2147483647, 0, -2147483647 - 1, 80, 80, 80, 80, 80},
  };
  for (const KernelConfig& config : runner_.grouped_configs()) {
    for (const std::vector<int32_t>& offsets : broken) {
      W4A16_ASSERT_CUDA(cudaMemcpy(p.offsets.get(), offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
      ASSERT_NO_FATAL_FAILURE(p.c.fill_bytes(0xFF));
      W4A16_ASSERT_OK(runner_.grouped_gemm(p.arguments(w), config, nullptr));
      W4A16_ASSERT_CUDA(cudaDeviceSynchronize());
      std::vector<uint16_t> all;
      ASSERT_NO_FATAL_FAILURE(p.c.download(&all));
      EXPECT_TRUE(test::all_bytes_equal(all.data(), Problem::kGuard * 2, 0xFF)) << config.name();
      EXPECT_TRUE(test::all_bytes_equal(all.data() + Problem::kGuard + size_t(p.rows) * w.n, Problem::kGuard * 2, 0xFF))
          << config.name();
    }
  }
}

// Every rule of check_grouped_arguments, through the runner, leaves C untouched; so does rows = 0.
TEST_F(Grouped, BadArgumentsAreRejectedWithoutTouchingC) {
  W4A16_RANDOM(rng);
  Experts w;
  ASSERT_NO_FATAL_FAILURE(make_experts(rng, 8, 128, 256, 128, kAllFormats[1], &w));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, 20, 2, Routing::kRandom, 0, &p));
  const GroupedGemmArguments good = p.arguments(w);
  const KernelConfig config = runner_.default_grouped_config(good.rows, good.experts, good.n, good.k);
  auto misaligned = [](const void* pointer, size_t bytes) { return static_cast<const uint8_t*>(pointer) + bytes; };
  const std::vector<std::tuple<std::string, GroupedGemmArguments, StatusCode>> bad = [&] {
    std::vector<std::tuple<std::string, GroupedGemmArguments, StatusCode>> list;
    auto add = [&](const char* name, auto change, StatusCode code) {
      GroupedGemmArguments args = good;
      change(args);
      list.emplace_back(name, args, code);
    };
    add("null offsets", [](auto& a) { a.expert_offsets = nullptr; }, StatusCode::kInvalidArgument);
    add("null a", [](auto& a) { a.a = nullptr; }, StatusCode::kInvalidArgument);
    add("no experts", [](auto& a) { a.experts = 0; }, StatusCode::kInvalidArgument);
    add("too many experts", [](auto& a) { a.experts = 65537; }, StatusCode::kInvalidArgument);
    add("negative rows", [](auto& a) { a.rows = -1; }, StatusCode::kInvalidArgument);
    add("n % 16", [](auto& a) { a.n = 120; }, StatusCode::kUnsupportedShape);
    add("k % 64", [](auto& a) { a.k = 224; }, StatusCode::kUnsupportedShape);
    add("group", [](auto& a) { a.group_size = 96; }, StatusCode::kUnsupportedGroupSize);
    add("alpha", [](auto& a) { a.alpha = std::nanf(""); }, StatusCode::kInvalidArgument);
    add("float_zeros without zeros", [](auto& a) { a.zeros = nullptr; a.float_zeros = true; }, StatusCode::kInvalidArgument);
    add("misaligned a", [&](auto& a) { a.a = misaligned(a.a, 2); }, StatusCode::kMisalignedPointer);
    add("misaligned scales", [&](auto& a) { a.scales = misaligned(a.scales, 8); }, StatusCode::kMisalignedPointer);
    add("misaligned offsets", [&](auto& a) { a.expert_offsets = reinterpret_cast<const int32_t*>(misaligned(a.expert_offsets, 2)); },
        StatusCode::kMisalignedPointer);
    add("c overlaps a", [&](auto& a) { a.c = const_cast<void*>(a.a); }, StatusCode::kInvalidArgument);
    add("c overlaps offsets", [&](auto& a) { a.c = const_cast<int32_t*>(a.expert_offsets); }, StatusCode::kInvalidArgument);
    return list;
  }();
  for (const auto& [name, args, code] : bad) {
    SCOPED_TRACE(name);
    W4A16_EXPECT_CODE(runner_.grouped_gemm(args, config, nullptr), code);
  }
  KernelConfig split = config;
  split.split_k = 2;
  W4A16_EXPECT_CODE(runner_.grouped_gemm(good, split, nullptr), StatusCode::kInvalidArgument);
  KernelConfig not_grouped;  // a listed dense config without a grouped kernel, if any
  for (const KernelConfig& candidate : runner_.configs()) {
    if (candidate.fused() && candidate.split_k == 1 &&
        std::find(runner_.grouped_configs().begin(), runner_.grouped_configs().end(), candidate) ==
            runner_.grouped_configs().end()) {
      not_grouped = candidate;
      break;
    }
  }
  if (not_grouped.tile_m != 0) {
    W4A16_EXPECT_CODE(runner_.grouped_gemm(good, not_grouped, nullptr), StatusCode::kUnsupportedArch);
  }
  GroupedGemmArguments empty = good;
  empty.rows = 0;
  W4A16_EXPECT_OK(runner_.grouped_gemm(empty, config, nullptr));
  W4A16_ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> all;
  ASSERT_NO_FATAL_FAILURE(p.c.download(&all));
  EXPECT_TRUE(test::all_bytes_equal(all.data(), all.size() * 2, 0xFF));
}

}  // namespace
}  // namespace w4a16
