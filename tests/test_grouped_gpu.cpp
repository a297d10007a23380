// GemmRunner::grouped_gemm (mixture of experts) on the device, against the grouped CPU reference
// (w4a16/moe.h): random routing by route_tokens (A's rows gathered into expert order on the
// host), every format, E in {8, 64, 128}, top-k in {1, 2, 8}, 1 to 5000 tokens, experts with no
// rows and one expert with every token, every grouped config forced in every format, bit-identical
// repeats, CUDA-graph replays with a different routing each time, and the argument checks.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "w4a16/w4a16.h"
#include "w4a16/moe.h"

namespace w4a16 {
namespace {

using test::DeviceArray;
using test::Random;

// top_k distinct experts per token; with `skew`, expert 0 is in every token's choice and the last
// expert in none.
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

// E experts of one format, quantized, packed back to back and uploaded; a third of the zero points
// moved as tests/test_gemm_gpu.cpp does (whole numbers 0..15, or fractions for the float op).
struct Experts {
  Format format;
  int n = 0, k = 0, group = 0;
  std::vector<QuantizedWeights> host;
  std::vector<uint16_t> bias;  // [E][n]
  DeviceArray<uint8_t> packed;
  DeviceArray<uint16_t> scales, zeros, d_bias;
};

void make_experts(Random& rng, int experts, int n, int k, int group, Format format, Experts* out) {
  out->format = format;
  out->n = n;
  out->k = k;
  out->group = group;
  out->host.resize(size_t(experts));
  for (QuantizedWeights& w : out->host) {
    const std::vector<float> values = rng.weights(n, k);
    W4A16_ASSERT_OK(quantize(values.data(), n, k, QuantizeOptions{group, format.element, format.quant}, &w));
    for (uint16_t& zero : w.zeros) {
      if (rng.uniform_int(0, 2) != 0) continue;
      const float z = format.quant == QuantOp::kScaleAndFloatZeros
                          ? element_to_float(format.element, zero) + 0.25f * rng.uniform_int(1, 3)
                          : float(rng.uniform_int(0, kMaxCode));
      zero = float_to_element(format.element, z);
    }
  }
  PackedExperts packed;
  W4A16_ASSERT_OK(pack_experts(out->host, &packed));
  out->bias = rng.elements(format.element, size_t(experts) * n, -1.0f, 1.0f);
  ASSERT_NO_FATAL_FAILURE(out->packed.upload(packed.packed));
  ASSERT_NO_FATAL_FAILURE(out->scales.upload(packed.scales));
  if (!packed.zeros.empty()) { ASSERT_NO_FATAL_FAILURE(out->zeros.upload(packed.zeros)); }
  ASSERT_NO_FATAL_FAILURE(out->d_bias.upload(out->bias));
}

// One routed problem: tokens' activations, the routing, A's rows in expert order, uploaded.
struct Routed {
  int tokens = 0;
  ExpertRouting routing;
  std::vector<uint16_t> a_tokens, a_sorted;
  DeviceArray<uint16_t> a;
  DeviceArray<int32_t> offsets;
  DeviceArray<uint16_t> c;
};

void make_routed(Random& rng, const Experts& w, int tokens, int top_k, bool skew, Routed* out) {
  const int experts = int(w.host.size());
  out->tokens = tokens;
  const std::vector<int32_t> ids = random_choices(rng, tokens, top_k, experts, skew);
  W4A16_ASSERT_OK(route_tokens(ids.data(), nullptr, tokens, top_k, experts, &out->routing));
  out->a_tokens = rng.elements(w.format.element, size_t(tokens) * w.k, -1.0f, 1.0f);
  const int rows = out->routing.positions();
  out->a_sorted.resize(size_t(rows) * w.k);
  for (int p = 0; p < rows; ++p) {
    std::copy_n(out->a_tokens.begin() + size_t(out->routing.source_rows[size_t(p)]) * w.k, w.k,
                out->a_sorted.begin() + size_t(p) * w.k);
  }
  ASSERT_NO_FATAL_FAILURE(out->a.upload(out->a_sorted));
  ASSERT_NO_FATAL_FAILURE(out->offsets.upload(out->routing.expert_offsets));
  ASSERT_NO_FATAL_FAILURE(out->c.allocate(size_t(rows) * w.n));
}

GroupedGemmArguments arguments(const Experts& w, const Routed& r, bool bias, float alpha) {
  GroupedGemmArguments args;
  args.a = r.a.get();
  args.packed_weights = w.packed.get();
  args.scales = w.scales.get();
  args.zeros = has_zeros(w.format.quant) ? w.zeros.get() : nullptr;
  args.float_zeros = w.format.quant == QuantOp::kScaleAndFloatZeros;
  args.bias = bias ? w.d_bias.get() : nullptr;
  args.c = r.c.get();
  args.expert_offsets = r.offsets.get();
  args.experts = int(w.host.size());
  args.rows = r.routing.positions();
  args.n = w.n;
  args.k = w.k;
  args.group_size = w.group;
  args.alpha = alpha;
  args.element = w.format.element;
  return args;
}

// C (rows in expert order) against the reference with each expert's bias added.
::testing::AssertionResult matches(const Experts& w, const Routed& r, bool bias, float alpha,
                                   const std::vector<uint16_t>& c) {
  std::vector<double> reference;
  if (Status s = reference_grouped_gemm(r.a_tokens.data(), w.host, r.routing, alpha, {}, &reference); !s.ok()) {
    return ::testing::AssertionFailure() << "reference: " << s.message();
  }
  const int rows = r.routing.positions();
  std::vector<double> magnitude(reference.size());
  for (int e = 0; e < r.routing.experts; ++e) {
    const int begin = r.routing.expert_offsets[size_t(e)], end = r.routing.expert_offsets[size_t(e) + 1];
    if (begin == end) continue;
    std::vector<int> sources(r.routing.source_rows.begin() + begin, r.routing.source_rows.begin() + end);
    const std::vector<double> m = test::reference_magnitude(r.a_tokens, r.tokens, w.host[size_t(e)], alpha, sources);
    for (int p = begin; p < end; ++p) {
      for (int j = 0; j < w.n; ++j) {
        const size_t index = size_t(p) * w.n + j;
        magnitude[index] = m[size_t(p - begin) * w.n + j];
        if (bias) reference[index] += element_to_float(w.format.element, w.bias[size_t(e) * w.n + j]);
      }
    }
  }
  return test::matches_reference(w.format.element, c, rows, w.n, {}, reference, magnitude);
}

class Grouped : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (test::has_gpu() && runner_ == nullptr) runner_ = new GemmRunner();
  }
  static void TearDownTestSuite() {
    delete runner_;
    runner_ = nullptr;
  }
  void SetUp() override {
    W4A16_REQUIRE_GPU();
    ASSERT_NE(runner_, nullptr);
    W4A16_ASSERT_OK(runner_->status());
    ASSERT_FALSE(runner_->grouped_configs().empty());
    W4A16_ASSERT_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (!test::has_gpu()) return;
    if (stream_ != nullptr) {
      W4A16_EXPECT_CUDA(cudaStreamSynchronize(stream_));
      W4A16_EXPECT_CUDA(cudaStreamDestroy(stream_));
    }
    W4A16_EXPECT_CUDA(cudaGetLastError());
  }

  // Poisons C, runs, downloads C.
  void run(const GroupedGemmArguments& args, const KernelConfig* config, Routed* r, std::vector<uint16_t>* c) {
    ASSERT_NO_FATAL_FAILURE(r->c.fill_bytes(0xFF, stream_));
    if (config != nullptr) {
      W4A16_ASSERT_OK(runner_->grouped_gemm(args, *config, stream_));
    } else {
      W4A16_ASSERT_OK(runner_->grouped_gemm(args, stream_));
    }
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    ASSERT_NO_FATAL_FAILURE(r->c.download(c));
  }

  static GemmRunner* runner_;
  cudaStream_t stream_ = nullptr;
};
GemmRunner* Grouped::runner_ = nullptr;

std::string describe(const Experts& w, const Routed& r, int top_k) {
  return std::to_string(r.tokens) + " tokens, top-" + std::to_string(top_k) + " of " + std::to_string(w.host.size()) +
         " experts, n " + std::to_string(w.n) + ", k " + std::to_string(w.k) + ", group " + std::to_string(w.group) +
         ", " + format_name(w.format);
}

// The default config over routings from decode to prefill, in every format.
TEST_F(Grouped, MatchesTheReferenceInEveryFormat) {
  W4A16_RANDOM(rng);
  struct Case {
    int experts, top_k, tokens, n, k, group;
    bool skew;
  };
  const Case cases[] = {{8, 2, 17, 272, 512, 64, false},    {64, 1, 300, 80, 1088, 0, false},
                        {128, 8, 1, 272, 512, 128, false},  {128, 8, 64, 48, 256, 32, false},
                        {8, 1, 3, 1040, 320, 64, true}};
  for (const Format& format : kAllFormats) {
    for (const Case& k : cases) {
      Experts w;
      ASSERT_NO_FATAL_FAILURE(make_experts(rng, k.experts, k.n, k.k, k.group == 0 ? k.k : k.group, format, &w));
      Routed r;
      ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, k.tokens, k.top_k, k.skew, &r));
      const bool bias = rng.coin();
      const float alpha = rng.alpha();
      const GroupedGemmArguments args = arguments(w, r, bias, alpha);
      SCOPED_TRACE(describe(w, r, k.top_k) + ", config " + runner_->default_grouped_config(args).name());
      std::vector<uint16_t> c;
      ASSERT_NO_FATAL_FAILURE(run(args, nullptr, &r, &c));
      EXPECT_TRUE(matches(w, r, bias, alpha, c));
    }
  }
}

// Every grouped config forced in every format, on one routing with a skewed spread (one expert
// with every token, one with none) and m-tiles that end mid-expert.
TEST_F(Grouped, EveryConfigInEveryFormat) {
  W4A16_RANDOM(rng);
  for (const Format& format : kAllFormats) {
    Experts w;
    ASSERT_NO_FATAL_FAILURE(make_experts(rng, 8, 272, 512, 128, format, &w));
    Routed r;
    ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, 45, 2, /*skew=*/true, &r));
    const GroupedGemmArguments args = arguments(w, r, /*bias=*/true, 1.0f);
    for (const KernelConfig& config : runner_->grouped_configs()) {
      SCOPED_TRACE(describe(w, r, 2) + ", config " + config.name());
      std::vector<uint16_t> c;
      ASSERT_NO_FATAL_FAILURE(run(args, &config, &r, &c));
      EXPECT_TRUE(matches(w, r, true, 1.0f, c));
    }
  }
}

// 5000 tokens, top-2 of 8, one expert in every token's choice: a long expert (5000 rows) next to
// short ones, at the default config (the multistage prefill tiles).
TEST_F(Grouped, ManyTokensOneExpertTakesAll) {
  W4A16_RANDOM(rng);
  Experts w;
  ASSERT_NO_FATAL_FAILURE(make_experts(rng, 8, 128, 256, 64, Format{ElementType::kBFloat16, QuantOp::kScaleAndZeros}, &w));
  Routed r;
  ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, 5000, 2, /*skew=*/true, &r));
  ASSERT_EQ(r.routing.rows_of(0), 5000);
  ASSERT_EQ(r.routing.rows_of(7), 0);
  const GroupedGemmArguments args = arguments(w, r, false, 1.0f);
  SCOPED_TRACE(describe(w, r, 2) + ", config " + runner_->default_grouped_config(args).name());
  std::vector<uint16_t> c;
  ASSERT_NO_FATAL_FAILURE(run(args, nullptr, &r, &c));
  EXPECT_TRUE(matches(w, r, false, 1.0f, c));
}

// Two runs give the same bits (no atomics, a fixed order inside every block).
TEST_F(Grouped, RepeatsAreBitIdentical) {
  W4A16_RANDOM(rng);
  for (const Format& format : kAllFormats) {
    Experts w;
    ASSERT_NO_FATAL_FAILURE(make_experts(rng, 64, 272, 512, 64, format, &w));
    Routed r;
    ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, 40, 8, false, &r));
    const GroupedGemmArguments args = arguments(w, r, true, 0.5f);
    std::vector<uint16_t> first, second;
    ASSERT_NO_FATAL_FAILURE(run(args, nullptr, &r, &first));
    ASSERT_NO_FATAL_FAILURE(run(args, nullptr, &r, &second));
    EXPECT_TRUE(first == second) << format_name(format);
  }
}

// A captured graph replays with the routing it finds in device memory: three routings of the same
// row count, written into the captured buffers between replays, each checked.
TEST_F(Grouped, GraphReplaysFollowTheRouting) {
  W4A16_RANDOM(rng);
  Experts w;
  ASSERT_NO_FATAL_FAILURE(make_experts(rng, 16, 272, 512, 128, Format{}, &w));
  Routed r;
  ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, 24, 2, false, &r));
  const GroupedGemmArguments args = arguments(w, r, false, 1.0f);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  W4A16_ASSERT_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  const Status captured = runner_->grouped_gemm(args, stream_);
  W4A16_ASSERT_CUDA(cudaStreamEndCapture(stream_, &graph));
  W4A16_ASSERT_OK(captured);
  W4A16_ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 3; ++replay) {
    SCOPED_TRACE("replay " + std::to_string(replay));
    if (replay > 0) {
      // A new routing of the same 24 x 2 rows, into the same device buffers.
      Routed next;
      ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, 24, 2, replay == 2, &next));
      W4A16_ASSERT_CUDA(cudaMemcpy(r.a.get(), next.a_sorted.data(), next.a_sorted.size() * 2, cudaMemcpyHostToDevice));
      W4A16_ASSERT_CUDA(cudaMemcpy(r.offsets.get(), next.routing.expert_offsets.data(),
                                   next.routing.expert_offsets.size() * 4, cudaMemcpyHostToDevice));
      r.routing = next.routing;
      r.a_tokens = next.a_tokens;
      r.a_sorted = next.a_sorted;
    }
    ASSERT_NO_FATAL_FAILURE(r.c.fill_bytes(0xFF, stream_));
    W4A16_ASSERT_CUDA(cudaGraphLaunch(exec, stream_));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<uint16_t> c;
    ASSERT_NO_FATAL_FAILURE(r.c.download(&c));
    EXPECT_TRUE(matches(w, r, false, 1.0f, c));
  }
  W4A16_EXPECT_CUDA(cudaGraphExecDestroy(exec));
  W4A16_EXPECT_CUDA(cudaGraphDestroy(graph));
}

// Offsets that break the contract (decreasing, past rows, negative) give wrong rows but no access
// outside A and C: C's guard bytes stay poisoned and compute-sanitizer (gpu-check) stays clean.
TEST_F(Grouped, BrokenOffsetsStayInsideTheBuffers) {
  W4A16_RANDOM(rng);
  Experts w;
  ASSERT_NO_FATAL_FAILURE(make_experts(rng, 4, 80, 256, 64, Format{}, &w));
  Routed r;
  ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, 10, 2, false, &r));  // 20 rows
  const int rows = r.routing.positions();
  // C with 4096 guard elements on each side.
  DeviceArray<uint16_t> guarded;
  constexpr size_t kGuard = 4096;
  ASSERT_NO_FATAL_FAILURE(guarded.allocate(size_t(rows) * w.n + 2 * kGuard));
  for (const std::vector<int32_t>& offsets : std::vector<std::vector<int32_t>>{
           {0, 15, 5, 20, 20}, {-7, 3, 40, 2, 1000}, {0, 20, 20, 20, -1}, {20, 0, 0, 0, 0}}) {
    W4A16_ASSERT_CUDA(cudaMemcpy(r.offsets.get(), offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice));
    ASSERT_NO_FATAL_FAILURE(guarded.fill_bytes(0xFF, stream_));
    GroupedGemmArguments args = arguments(w, r, false, 1.0f);
    args.c = guarded.get() + kGuard;
    W4A16_ASSERT_OK(runner_->grouped_gemm(args, stream_));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<uint16_t> all;
    ASSERT_NO_FATAL_FAILURE(guarded.download(&all));
    EXPECT_TRUE(test::all_bytes_equal(all.data(), kGuard * 2, 0xFF)) << "write before C";
    EXPECT_TRUE(test::all_bytes_equal(all.data() + kGuard + size_t(rows) * w.n, kGuard * 2, 0xFF)) << "write past C";
  }
}

// Bad arguments are refused before any launch, with their codes.
TEST_F(Grouped, RefusesBadArguments) {
  W4A16_RANDOM(rng);
  Experts w;
  ASSERT_NO_FATAL_FAILURE(make_experts(rng, 4, 80, 256, 64, Format{}, &w));
  Routed r;
  ASSERT_NO_FATAL_FAILURE(make_routed(rng, w, 10, 2, false, &r));
  const GroupedGemmArguments good = arguments(w, r, true, 1.0f);
  const KernelConfig config = runner_->default_grouped_config(good);
  W4A16_EXPECT_OK(runner_->check_grouped(good, config));
  auto code = [&](auto&& edit) {
    GroupedGemmArguments args = good;
    edit(args);
    return runner_->check_grouped(args, config).code();
  };
  auto offset = [](const void* p, int bytes) { return static_cast<const void*>(static_cast<const char*>(p) + bytes); };
  EXPECT_EQ(code([](GroupedGemmArguments& a) { a.expert_offsets = nullptr; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](GroupedGemmArguments& a) { a.experts = 0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](GroupedGemmArguments& a) { a.rows = -1; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](GroupedGemmArguments& a) { a.n = 88; }), StatusCode::kUnsupportedShape);
  EXPECT_EQ(code([](GroupedGemmArguments& a) { a.group_size = 48; }), StatusCode::kUnsupportedGroupSize);
  EXPECT_EQ(code([](GroupedGemmArguments& a) { a.float_zeros = true; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([&](GroupedGemmArguments& a) { a.scales = offset(a.scales, 2); }), StatusCode::kMisalignedPointer);
  EXPECT_EQ(code([&](GroupedGemmArguments& a) { a.expert_offsets = static_cast<const int32_t*>(offset(a.expert_offsets, 2)); }),
            StatusCode::kMisalignedPointer);
  EXPECT_EQ(code([&](GroupedGemmArguments& a) { a.c = const_cast<void*>(a.a); }), StatusCode::kInvalidArgument);
  // Configs without a grouped kernel: split-K, the warp-specialized and dequant_cublas families.
  KernelConfig split = config;
  split.split_k = 2;
  W4A16_EXPECT_CODE(runner_->check_grouped(good, split), StatusCode::kInvalidArgument);
  for (const KernelConfig& other : runner_->configs()) {
    if (other.family == KernelFamily::kWarpSpecialized || other.family == KernelFamily::kDequantCublas) {
      W4A16_EXPECT_CODE(runner_->check_grouped(good, other), StatusCode::kInvalidArgument);
      break;
    }
  }
  // No rows: nothing to do, and nothing written.
  GroupedGemmArguments empty = good;
  empty.rows = 0;
  ASSERT_NO_FATAL_FAILURE(r.c.fill_bytes(0xFF, stream_));
  W4A16_EXPECT_OK(runner_->grouped_gemm(empty, stream_));
  W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
  std::vector<uint16_t> c;
  ASSERT_NO_FATAL_FAILURE(r.c.download(&c));
  EXPECT_TRUE(test::all_bytes_equal(c.data(), c.size() * 2, 0xFF));
}

}  // namespace
}  // namespace w4a16
