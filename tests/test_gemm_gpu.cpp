// GPU tests of the runner: correctness against the CPU reference (default config over many shapes,
// and every compiled config), determinism, argument validation, the profiler and graph capture.
// Every test skips when the machine has no CUDA device.
#include <algorithm>
#include <limits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <atomic>
#include <memory>
#include <thread>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "delayed_copy.h"
#include "unpack_probe.h"
#include "runner/heuristics.h"
#include "runner/tuning.h"
#include "test_util.h"
#include "w4a16/w4a16.h"

namespace w4a16 {
namespace {

using test::DeviceArray;
using test::Random;

const void* offset(const void* pointer, size_t bytes) { return static_cast<const uint8_t*>(pointer) + bytes; }

// ---------------------------------------------------------------------------------------------
// Problem setup

// Quantized weights in one format, packed and uploaded.
struct Weights {
  int n = 0, k = 0, group = 0;
  Format format;
  QuantizedWeights q;
  DeviceArray<uint8_t> packed;
  DeviceArray<uint16_t> scales, zeros;  // zeros: the zero-point ops only
};

// A third of the zero points change: with float zero points (kScaleAndFloatZeros) they get a
// fractional part (HQQ-style; quantize() itself only makes whole ones), so the path that serves
// fractions is tested on them; with kScaleAndZeros they become another whole number in 0..15.
void make_weights(Random& rng, int n, int k, int group, Weights* w, Format format = {}) {
  w->n = n;
  w->k = k;
  w->group = group;
  w->format = format;
  const std::vector<float> host = rng.weights(n, k);
  W4A16_ASSERT_OK(quantize(host.data(), n, k, QuantizeOptions{group, format.element, format.quant}, &w->q));
  for (uint16_t& zero : w->q.zeros) {
    if (rng.uniform_int(0, 2) != 0) continue;
    if (format.quant == QuantOp::kScaleAndFloatZeros) {
      zero = float_to_element(format.element, element_to_float(format.element, zero) + 0.25f * rng.uniform_int(1, 3));
    } else {
      // quantize() centres z near 8 on these weights; the unpack offsets must hold for every code.
      zero = float_to_element(format.element, float(rng.uniform_int(0, kMaxCode)));
    }
  }
  std::vector<uint8_t> packed;
  W4A16_ASSERT_OK(pack_weights(w->q, &packed));
  ASSERT_EQ(packed.size(), packed_weight_bytes(n, k));
  ASSERT_NO_FATAL_FAILURE(w->packed.upload(packed, 64));  // slack for the misaligned-pointer tests
  ASSERT_NO_FATAL_FAILURE(w->scales.upload(w->q.scales, 64));
  if (!w->q.zeros.empty()) { ASSERT_NO_FATAL_FAILURE(w->zeros.upload(w->q.zeros, 64)); }
}

// C with guard zones before and after it, all poisoned with 0xFF bytes (fp16 NaN) before a run: an
// output the kernel forgets stays NaN, a write outside C changes a guard.
class Output {
 public:
  static constexpr size_t kGuard = 4096;  // elements on each side; keeps C 256-byte aligned

  void allocate(int m, int n) {
    m_ = m;
    n_ = n;
    ASSERT_NO_FATAL_FAILURE(storage_.allocate(size_t(m) * n + 2 * kGuard));
  }
  uint16_t* c() const { return storage_.get() + kGuard; }
  void poison(cudaStream_t stream) { ASSERT_NO_FATAL_FAILURE(storage_.fill_bytes(0xFF, stream)); }
  // Downloads C; fails if a guard byte changed.
  void download(std::vector<uint16_t>* out) const {
    std::vector<uint16_t> all;
    ASSERT_NO_FATAL_FAILURE(storage_.download(&all));
    const size_t elements = size_t(m_) * n_;
    EXPECT_TRUE(test::all_bytes_equal(all.data(), kGuard * sizeof(uint16_t), 0xFF)) << "write before the start of C";
    EXPECT_TRUE(test::all_bytes_equal(all.data() + kGuard + elements, kGuard * sizeof(uint16_t), 0xFF))
        << "write past the end of C";
    out->assign(all.begin() + kGuard, all.begin() + kGuard + elements);
  }
  // C and both guards still hold the poison.
  ::testing::AssertionResult untouched() const {
    std::vector<uint16_t> all;
    storage_.download(&all);
    if (all.size() != storage_.size()) return ::testing::AssertionFailure() << "download failed";
    return test::all_bytes_equal(all.data(), all.size() * sizeof(uint16_t), 0xFF);
  }

 private:
  int m_ = 0, n_ = 0;
  DeviceArray<uint16_t> storage_;
};

// Activations, bias and alpha of one problem, on host and device, in the weights' element type.
struct Problem {
  int m = 0;
  float alpha = 1.0f;
  bool use_bias = false;
  std::vector<uint16_t> a, bias;
  DeviceArray<uint16_t> d_a, d_bias;
  Output out;

  GemmArguments arguments(const Weights& w) const {
    GemmArguments args;
    args.a = d_a.get();
    args.packed_weights = w.packed.get();
    args.scales = w.scales.get();
    args.zeros = has_zeros(w.format.quant) ? w.zeros.get() : nullptr;
    args.float_zeros = w.format.quant == QuantOp::kScaleAndFloatZeros;
    args.element = w.format.element;
    args.bias = use_bias ? d_bias.get() : nullptr;
    args.c = out.c();
    args.m = m;
    args.n = w.n;
    args.k = w.k;
    args.group_size = w.group;
    args.alpha = alpha;
    return args;
  }
};

// Activations uniform in [-range, range) (bf16 tests go to 3e4, beyond what fp16 can hold).
void make_problem(Random& rng, const Weights& w, int m, bool use_bias, float alpha, Problem* p, float range = 1.0f) {
  p->m = m;
  p->alpha = alpha;
  p->use_bias = use_bias;
  p->a = rng.elements(w.format.element, size_t(m) * w.k, -range, range);
  p->bias = rng.elements(w.format.element, size_t(w.n), -1.0f, 1.0f);
  ASSERT_NO_FATAL_FAILURE(p->d_a.upload(p->a, 64));
  ASSERT_NO_FATAL_FAILURE(p->d_bias.upload(p->bias, 64));
  ASSERT_NO_FATAL_FAILURE(p->out.allocate(m, w.n));
}

struct Expected {
  std::vector<int> rows;  // empty: all
  std::vector<double> reference, magnitude;
};

Expected expected(const Weights& w, const Problem& p, std::vector<int> rows) {
  Expected e;
  e.rows = std::move(rows);
  const Status status =
      reference_gemm(p.a.data(), p.m, w.q, p.use_bias ? p.bias.data() : nullptr, p.alpha, e.rows, &e.reference);
  EXPECT_TRUE(status.ok()) << status.to_string();
  e.magnitude = test::reference_magnitude(p.a, p.m, w.q, p.alpha, e.rows);
  return e;
}

std::string describe(int m, const Weights& w, const Problem& p, const KernelConfig& config) {
  return "m " + std::to_string(m) + ", n " + std::to_string(w.n) + ", k " + std::to_string(w.k) + ", group " +
         std::to_string(w.group) + ", " + format_name(w.format) + (p.use_bias ? ", bias" : ", no bias") + ", alpha " + std::to_string(p.alpha) +
         ", config " + config.name();
}

// ---------------------------------------------------------------------------------------------
// One runner per test process, shared by the suites below.
class Gpu : public ::testing::Test {
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
    ASSERT_FALSE(runner_->configs().empty());
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

  static const GemmRunner& runner() { return *runner_; }

  // Largest workspace any config needs for the problem.
  static size_t max_workspace(int m, int n, int k) {
    size_t bytes = 0;
    for (const KernelConfig& config : runner().configs()) bytes = std::max(bytes, runner().workspace_bytes(m, n, k, config));
    return bytes;
  }

  // Poisons C (NaN) and the workspace, runs `config` (the default when null), waits, downloads C.
  void run(const GemmArguments& args, const KernelConfig* config, DeviceArray<uint8_t>& workspace, Output& out,
           std::vector<uint16_t>* c, int workspace_poison = 0xFF) {
    ASSERT_NO_FATAL_FAILURE(out.poison(stream_));
    ASSERT_NO_FATAL_FAILURE(workspace.fill_bytes(workspace_poison, stream_));
    const Status status = config != nullptr
                              ? runner().gemm(args, *config, workspace.get(), workspace.bytes(), stream_)
                              : runner().gemm(args, workspace.get(), workspace.bytes(), stream_);
    W4A16_ASSERT_OK(status);
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    W4A16_ASSERT_CUDA(cudaGetLastError());
    ASSERT_NO_FATAL_FAILURE(out.download(c));
  }

  cudaStream_t stream_ = nullptr;
  static GemmRunner* runner_;
};
GemmRunner* Gpu::runner_ = nullptr;

// =============================================================================================
TEST_F(Gpu, ConfigListIsConsistent) {
  const auto& configs = runner().configs();
  std::set<std::string> names;
  bool has_fused = false;
  for (const KernelConfig& config : configs) {
    SCOPED_TRACE(config.name());
    EXPECT_TRUE(names.insert(config.name()).second) << "listed twice";
    KernelConfig parsed;
    ASSERT_TRUE(parse_kernel_config(config.name(), &parsed));
    EXPECT_EQ(parsed, config);
    if (config.fused()) {
      has_fused = true;
      const auto& splits = heuristics::split_k_choices();
      EXPECT_NE(std::find(splits.begin(), splits.end(), config.split_k), splits.end());
      // Split-K keeps its partial sums in the workspace; a single split needs none.
      if (config.split_k > 1) EXPECT_GT(runner().workspace_bytes(64, 1024, 4096, config), 0u);
      else EXPECT_EQ(runner().workspace_bytes(64, 1024, 4096, config), 0u);
    }
  }
  if (runner().sm_version() >= 80) { EXPECT_TRUE(has_fused) << "sm_" << runner().sm_version() << " without fused configs"; }
  // wgmma tiles: listed exactly when the build has sm_90a code and the device is sm_90.
  const bool has_wgmma = std::any_of(configs.begin(), configs.end(), [](const KernelConfig& c) {
    return c.family == KernelFamily::kWarpSpecialized;
  });
#if defined(W4A16_WITH_WGMMA)
  EXPECT_EQ(has_wgmma, runner().sm_version() == 90);
#else
  EXPECT_FALSE(has_wgmma);
#endif
  std::printf("device sm_%d, %d SMs, %zu configs\n", runner().sm_version(), runner().sm_count(), configs.size());
  // The heuristic only ever names listed configs.
  for (int m : {1, 16, 17, 100, 1000, 5000})
    for (const auto& [n, k] : std::vector<std::pair<int, int>>{{4096, 4096}, {80, 192}, {11008, 4096}, {1040, 320}}) {
      const KernelConfig c = runner().heuristic_config(m, n, k);
      EXPECT_NE(std::find(configs.begin(), configs.end(), c), configs.end()) << c.name();
    }
}

// =============================================================================================
// The default config against the reference, over m and shapes.

struct Shape {
  int n, k, group;  // group 0: k (per-channel)
  Format format;
};

using test::format_tag;

std::vector<Shape> default_config_shapes() {
  std::vector<Shape> shapes;
  const std::pair<int, int> nk[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {80, 192}, {1040, 320}, {272, 1088}};
  for (const Format& format : kAllFormats)
    for (const auto& [n, k] : nk)
      for (int group : {32, 64, 128, 0})
        if (group == 0 || k % group == 0) shapes.push_back({n, k, group, format});
  return shapes;
}

std::string shape_name(const ::testing::TestParamInfo<Shape>& info) {
  return format_tag(info.param.format) + "_n" + std::to_string(info.param.n) + "_k" + std::to_string(info.param.k) +
         "_" + (info.param.group == 0 ? std::string("per_channel") : "g" + std::to_string(info.param.group));
}

class DefaultConfig : public Gpu, public ::testing::WithParamInterface<Shape> {};

TEST_P(DefaultConfig, MatchesReference) {
  W4A16_RANDOM(rng);
  const Shape shape = GetParam();
  const int n = shape.n, k = shape.k, group = shape.group == 0 ? k : shape.group;
  Weights w;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w, shape.format));
  DeviceArray<uint8_t> workspace;
  const int ms[] = {1, 3, 16, 17, 64, 128, 1000};
  for (size_t i = 0; i < std::size(ms); ++i) {
    const int m = ms[i];
    const bool use_bias = i % 2 == 0;
    const float alpha = i % 3 == 1 ? rng.alpha() : 1.0f;
    Problem p;
    ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, use_bias, alpha, &p));
    const KernelConfig config = runner().default_config(m, n, k, group, w.format);
    SCOPED_TRACE(describe(m, w, p, config));
    const size_t needed = runner().workspace_bytes(m, n, k, group, w.format);
    EXPECT_EQ(needed, runner().workspace_bytes(m, n, k, config));
    if (workspace.bytes() < needed) { ASSERT_NO_FATAL_FAILURE(workspace.allocate(needed)); }

    std::vector<uint16_t> c;
    ASSERT_NO_FATAL_FAILURE(run(p.arguments(w), nullptr, workspace, p.out, &c));
    EXPECT_TRUE(test::all_finite(w.format.element, c, m, n));
    const Expected e = expected(w, p, test::sample_rows(rng, m, n, k));
    EXPECT_TRUE(test::matches_reference(w.format.element, c, m, n, e.rows, e.reference, e.magnitude));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DefaultConfig, ::testing::ValuesIn(default_config_shapes()), shape_name);

// =============================================================================================
// The unpack with whole-number zero points (QuantOp::kScaleAndZeros), on the device: for every
// pair of zero points (channel r, channel r + 8) and every code in every slot, the fragment holds
// exactly q - z, in both element types. (A fractional zero point would be rounded to the offsets'
// unit: that is what the float op is for.)
TEST(Unpack, WholeNumberZeroPointsGiveExactCodes) {
  W4A16_REQUIRE_GPU();
  W4A16_RANDOM(rng);
  for (ElementType element : {ElementType::kFloat16, ElementType::kBFloat16}) {
    SCOPED_TRACE(to_string(element));
    std::vector<test::UnpackCase> cases;
    for (int z_low = 0; z_low <= kMaxCode; ++z_low) {
      for (int z_high = 0; z_high <= kMaxCode; ++z_high) {
        const uint16_t low = float_to_element(element, float(z_low)), high = float_to_element(element, float(z_high));
        // Every code in every slot at once (slot s holds (q + s) mod 16), then random words.
        for (uint32_t q = 0; q <= uint32_t(kMaxCode); ++q) {
          uint32_t word = 0;
          for (uint32_t slot = 0; slot < 8; ++slot) word |= ((q + slot) & 0xFu) << (4 * slot);
          cases.push_back({word, low, high});
        }
        for (int r = 0; r < 4; ++r) cases.push_back({uint32_t(rng.engine()()), low, high});
      }
    }
    std::vector<float> got;
    W4A16_ASSERT_CUDA(test::unpack_with_offsets(element, cases, &got));
    int failures = 0;
    for (size_t i = 0; i < cases.size() && failures < 10; ++i) {
      const test::UnpackCase& c = cases[i];
      for (int reg = 0; reg < 4; ++reg) {
        // Register reg holds slots reg (low half) and reg + 4 (high half); odd registers are
        // channel r + 8's.
        const float zero = element_to_float(element, reg % 2 == 0 ? c.zero_low : c.zero_high);
        for (int half = 0; half < 2; ++half) {
          const int slot = reg + 4 * half;
          const float want = float((c.word >> (4 * slot)) & 0xFu) - zero;
          if (got[8 * i + 2 * reg + half] != want) {
            ++failures;
            ADD_FAILURE() << "word 0x" << std::hex << c.word << std::dec << " z " << element_to_float(element, c.zero_low)
                          << "/" << element_to_float(element, c.zero_high) << " register " << reg << " half " << half
                          << ": got " << got[8 * i + 2 * reg + half] << ", want " << want;
          }
        }
      }
    }
  }
}

// =============================================================================================
// Every compiled config, forced.

struct ConfigShape {
  int m, n, k, group;  // group 0: k
  Format format = {};
  float range = 1.0f;  // activations uniform in [-range, range)
};

class EveryConfig : public Gpu, public ::testing::WithParamInterface<ConfigShape> {};

TEST_P(EveryConfig, MatchesReference) {
  W4A16_RANDOM(rng);
  const ConfigShape shape = GetParam();
  const int m = shape.m, n = shape.n, k = shape.k, group = shape.group == 0 ? k : shape.group;
  Weights w;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w, shape.format));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, /*use_bias=*/true, rng.alpha(), &p, shape.range));
  const GemmArguments args = p.arguments(w);
  const Expected e = expected(w, p, {});
  DeviceArray<uint8_t> workspace;
  ASSERT_NO_FATAL_FAILURE(workspace.allocate(max_workspace(m, n, k)));

  int ran = 0;
  std::set<KernelFamily> families;
  for (const KernelConfig& config : runner().configs()) {
    if (!test::family_selected(config.family)) continue;
    SCOPED_TRACE(describe(m, w, p, config));
    if (config.fused() && config.split_k > k / 64) {
      W4A16_EXPECT_CODE(runner().check(args, config, workspace.get(), workspace.bytes()), StatusCode::kInvalidArgument);
      continue;
    }
    W4A16_EXPECT_OK(runner().check(args, config, workspace.get(), workspace.bytes()));
    // Exactly the workspace the runner asks for (a null pointer when it asks for none).
    const size_t needed = runner().workspace_bytes(m, n, k, config);
    DeviceArray<uint8_t> exact;
    ASSERT_NO_FATAL_FAILURE(exact.allocate(needed));
    std::vector<uint16_t> c;
    ASSERT_NO_FATAL_FAILURE(run(args, &config, exact, p.out, &c));
    EXPECT_TRUE(test::all_finite(w.format.element, c, m, n));
    EXPECT_TRUE(test::matches_reference(w.format.element, c, m, n, e.rows, e.reference, e.magnitude));
    ++ran;
    families.insert(config.family);
  }
  EXPECT_GT(ran, 0);
  // Every family this device offers (and the test was asked to cover) was exercised.
  for (const KernelConfig& config : runner().configs()) {
    if (test::family_selected(config.family)) {
      EXPECT_EQ(families.count(config.family), 1u) << to_string(config.family);
    }
  }
  std::printf("%d of %zu configs ran\n", ran, runner().configs().size());
}

std::vector<ConfigShape> every_config_shapes() {
  const ConfigShape base[] = {
      {17, 80, 1088, 32}, {130, 1040, 1024, 128}, {1, 272, 4096, 0}, {40, 208, 640, 64},
      // per-channel group that is not a power of two; n smaller than the widest tiles' n
      {3, 48, 1088, 0},
      // several bands of 8 m-tiles, the last one partial (tile_scheduler.cuh)
      {700, 1040, 1024, 128},
      // group 64 with an odd number of k-blocks (the last two-k-block slot of the ws tiles is half
      // empty) and n past the first 256-channel tile's second half
      {65, 272, 1088, 64}};
  std::vector<ConfigShape> shapes;
  for (const Format& format : kAllFormats) {
    for (ConfigShape shape : base) {
      shape.format = format;
      shapes.push_back(shape);
    }
    // bf16 activations beyond fp16's range (|a| up to 3e4): finite and within tolerance.
    if (format.element == ElementType::kBFloat16) shapes.push_back({33, 272, 1024, 128, format, 3e4f});
  }
  return shapes;
}

INSTANTIATE_TEST_SUITE_P(Shapes, EveryConfig, ::testing::ValuesIn(every_config_shapes()),
                         [](const ::testing::TestParamInfo<ConfigShape>& info) {
                           const ConfigShape& s = info.param;
                           return format_tag(s.format) + "_m" + std::to_string(s.m) + "_n" + std::to_string(s.n) +
                                  "_k" + std::to_string(s.k) + "_" +
                                  (s.group == 0 ? std::string("per_channel") : "g" + std::to_string(s.group)) +
                                  (s.range > 1.0f ? "_large" : "");
                         });

// =============================================================================================
// Same config, same inputs: bit-identical outputs, whatever the workspace held before.

class BitIdentical : public Gpu, public ::testing::WithParamInterface<Format> {};

TEST_P(BitIdentical, RepeatedRuns) {
  W4A16_RANDOM(rng);
  const int m = 33, n = 1040, k = 4096, group = 128;
  Weights w;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w, GetParam()));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, true, rng.alpha(), &p));
  const GemmArguments args = p.arguments(w);
  const Expected e = expected(w, p, {});
  DeviceArray<uint8_t> workspace;
  ASSERT_NO_FATAL_FAILURE(workspace.allocate(max_workspace(m, n, k)));
  int split_configs = 0;
  for (const KernelConfig& config : runner().configs()) {
    if (!test::family_selected(config.family)) continue;
    if (config.fused() && config.split_k > k / 64) continue;
    SCOPED_TRACE(describe(m, w, p, config));
    std::vector<uint16_t> first, second;
    ASSERT_NO_FATAL_FAILURE(run(args, &config, workspace, p.out, &first, /*workspace_poison=*/0xFF));
    ASSERT_NO_FATAL_FAILURE(run(args, &config, workspace, p.out, &second, /*workspace_poison=*/0x7F));
    EXPECT_TRUE(test::matches_reference(w.format.element, first, m, n, e.rows, e.reference, e.magnitude));
    ASSERT_EQ(first.size(), second.size());
    if (first != second) {
      size_t i = 0;
      while (first[i] == second[i]) ++i;
      ADD_FAILURE() << "runs differ, first at C[" << i / n << "][" << i % n << "]: "
                    << element_to_float(w.format.element, first[i]) << " vs "
                    << element_to_float(w.format.element, second[i]);
    }
    if (config.split_k > 1) ++split_configs;
  }
  if (runner().sm_version() >= 80) { EXPECT_GT(split_configs, 0) << "no split-K config was exercised"; }
}

INSTANTIATE_TEST_SUITE_P(Formats, BitIdentical, ::testing::ValuesIn(kAllFormats),
                         [](const ::testing::TestParamInfo<Format>& info) { return format_tag(info.param); });

// =============================================================================================
// Validation: every bad argument gets its code, and nothing is launched (C keeps its poison).

TEST_F(Gpu, InvalidArgumentsAreRejectedWithoutTouchingC) {
  W4A16_RANDOM(rng);
  const int m = 16, n = 256, k = 1024, group = 128;
  Weights w;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, true, 1.0f, &p));
  const GemmArguments valid = p.arguments(w);
  DeviceArray<uint8_t> workspace;
  ASSERT_NO_FATAL_FAILURE(workspace.allocate(max_workspace(m, n, k) + 1024));
  W4A16_ASSERT_OK(runner().check(valid, runner().default_config(m, n, k, group), workspace.get(), workspace.bytes()));

  auto expect_rejected = [&](const std::string& what, const GemmArguments& args, const KernelConfig* config,
                             void* ws, size_t ws_bytes, StatusCode code) {
    SCOPED_TRACE(what);
    ASSERT_NO_FATAL_FAILURE(p.out.poison(stream_));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const Status status = config != nullptr ? runner().gemm(args, *config, ws, ws_bytes, stream_)
                                            : runner().gemm(args, ws, ws_bytes, stream_);
    W4A16_EXPECT_CODE(status, code);
    EXPECT_FALSE(status.message().empty());
    if (config != nullptr) { W4A16_EXPECT_CODE(runner().check(args, *config, ws, ws_bytes), code); }
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    W4A16_ASSERT_CUDA(cudaGetLastError());
    EXPECT_TRUE(p.out.untouched()) << "C was written although the call failed";
  };
  using Edit = std::function<void(GemmArguments&)>;
  const struct {
    const char* what;
    Edit edit;
    StatusCode code;
  } cases[] = {
      {"a null", [](GemmArguments& a) { a.a = nullptr; }, StatusCode::kInvalidArgument},
      {"packed null", [](GemmArguments& a) { a.packed_weights = nullptr; }, StatusCode::kInvalidArgument},
      {"scales null", [](GemmArguments& a) { a.scales = nullptr; }, StatusCode::kInvalidArgument},
      {"c null", [](GemmArguments& a) { a.c = nullptr; }, StatusCode::kInvalidArgument},
      {"m = 0", [](GemmArguments& a) { a.m = 0; }, StatusCode::kInvalidArgument},
      {"m = -1", [](GemmArguments& a) { a.m = -1; }, StatusCode::kInvalidArgument},
      {"n = 0", [](GemmArguments& a) { a.n = 0; }, StatusCode::kInvalidArgument},
      {"k = 0", [](GemmArguments& a) { a.k = 0; }, StatusCode::kInvalidArgument},
      {"n % 16 != 0", [](GemmArguments& a) { a.n = 248; }, StatusCode::kUnsupportedShape},
      {"k % 64 != 0", [](GemmArguments& a) { a.k = 992; a.group_size = 32; }, StatusCode::kUnsupportedShape},
      {"group 48", [](GemmArguments& a) { a.group_size = 48; }, StatusCode::kUnsupportedGroupSize},
      {"group 0", [](GemmArguments& a) { a.group_size = 0; }, StatusCode::kUnsupportedGroupSize},
      {"group 256", [](GemmArguments& a) { a.group_size = 256; }, StatusCode::kUnsupportedGroupSize},
      {"k not a multiple of group", [](GemmArguments& a) { a.k = 960; }, StatusCode::kUnsupportedGroupSize},
      {"alpha NaN", [](GemmArguments& a) { a.alpha = NAN; }, StatusCode::kInvalidArgument},
      {"alpha inf", [](GemmArguments& a) { a.alpha = INFINITY; }, StatusCode::kInvalidArgument},
      {"element unknown", [](GemmArguments& a) { a.element = static_cast<ElementType>(5); }, StatusCode::kInvalidArgument},
      {"a misaligned", [](GemmArguments& a) { a.a = offset(a.a, 2); }, StatusCode::kMisalignedPointer},
      {"a 8-byte aligned", [](GemmArguments& a) { a.a = offset(a.a, 8); }, StatusCode::kMisalignedPointer},
      {"packed misaligned",
       [](GemmArguments& a) { a.packed_weights = static_cast<const uint8_t*>(a.packed_weights) + 2; },
       StatusCode::kMisalignedPointer},
      {"scales misaligned", [](GemmArguments& a) { a.scales = offset(a.scales, 2); }, StatusCode::kMisalignedPointer},
      {"zeros misaligned", [&](GemmArguments& a) { a.zeros = offset(w.scales.get(), 2); }, StatusCode::kMisalignedPointer},
      {"bias misaligned", [](GemmArguments& a) { a.bias = offset(a.bias, 2); }, StatusCode::kMisalignedPointer},
      {"c misaligned", [](GemmArguments& a) { a.c = const_cast<void*>(offset(a.c, 2)); }, StatusCode::kMisalignedPointer},
  };
  for (const auto& c : cases) {
    GemmArguments args = valid;
    c.edit(args);
    // Through the default config, and through every config that the list holds (validation is the
    // same whichever kernel would run).
    ASSERT_NO_FATAL_FAILURE(
        expect_rejected(std::string(c.what) + " (default config)", args, nullptr, workspace.get(), workspace.bytes(), c.code));
    for (const KernelConfig& config : runner().configs()) {
      if (config.fused() && config.split_k > 1 && config.split_k != 4) continue;
      ASSERT_NO_FATAL_FAILURE(expect_rejected(std::string(c.what) + " (" + config.name() + ")", args, &config,
                                              workspace.get(), workspace.bytes(), c.code));
    }
  }

  // Workspace: too small, null, misaligned, for a split-K config and for dequant_cublas.
  std::vector<KernelConfig> needs_workspace;
  for (const KernelConfig& config : runner().configs()) {
    if (config.family == KernelFamily::kDequantCublas || (config.split_k > 1 && config.split_k <= k / 64))
      needs_workspace.push_back(config);
  }
  if (runner().sm_version() >= 80) { ASSERT_FALSE(needs_workspace.empty()); }
  for (const KernelConfig& config : needs_workspace) {
    const size_t needed = runner().workspace_bytes(m, n, k, config);
    ASSERT_GT(needed, 0u) << config.name();
    ASSERT_LE(needed + 256, workspace.bytes());
    const std::string name = config.name();
    expect_rejected(name + ": workspace one byte short", valid, &config, workspace.get(), needed - 1,
                    StatusCode::kWorkspaceTooSmall);
    expect_rejected(name + ": no workspace", valid, &config, nullptr, 0, StatusCode::kWorkspaceTooSmall);
    expect_rejected(name + ": null workspace with a size", valid, &config, nullptr, needed,
                    StatusCode::kWorkspaceTooSmall);
    expect_rejected(name + ": workspace misaligned", valid, &config, workspace.get() + 16, needed,
                    StatusCode::kMisalignedPointer);
    expect_rejected(name + ": workspace 128-byte aligned", valid, &config, workspace.get() + 128, needed,
                    StatusCode::kMisalignedPointer);
  }

  // A config without a kernel in this build.
  KernelConfig odd = runner().default_config(m, n, k, group);
  odd.family = KernelFamily::kMultistage;
  odd.tile_m = 7;
  expect_rejected("tile_m = 7", valid, &odd, workspace.get(), workspace.bytes(), StatusCode::kUnsupportedArch);
  for (const KernelConfig& config : runner().configs()) {
    if (config.family != KernelFamily::kMultistage) continue;
    KernelConfig split3 = config;  // a listed tile with a split the list does not offer
    split3.split_k = 3;
    expect_rejected(split3.name(), valid, &split3, workspace.get(), workspace.bytes(), StatusCode::kUnsupportedArch);
    break;
  }

  // More output tiles than a one-dimensional grid (and the kernel's int tile index) can number:
  // rejected before anything is launched or read (the pointers point at far smaller buffers).
  for (const KernelConfig& config : runner().configs()) {
    if (!config.fused() || config.split_k != 1 || config.tile_m != 8) continue;
    GemmArguments huge = valid;
    huge.m = std::numeric_limits<int>::max();
    huge.n = std::numeric_limits<int>::max() / 16 * 16;
    huge.k = 64;
    huge.group_size = 64;
    expect_rejected(config.name() + " with 2^31 x 2^31 outputs", huge, &config, workspace.get(), workspace.bytes(),
                    StatusCode::kUnsupportedShape);
    break;
  }

  // split_k beyond the k / 64 k-blocks.
  for (const KernelConfig& config : runner().configs()) {
    if (!config.fused() || config.split_k < 2) continue;
    GemmArguments args = valid;
    args.k = 64 * (config.split_k - 1);  // one k-block short
    args.group_size = args.k;
    expect_rejected(config.name() + " with k = " + std::to_string(args.k), args, &config, workspace.get(),
                    workspace.bytes(), StatusCode::kInvalidArgument);
  }
}

// =============================================================================================
// The profiler.

TEST_F(Gpu, ProfilePicksAListedConfigAndMakesItTheDefault) {
  W4A16_RANDOM(rng);
  GemmRunner local;  // profile() changes the runner's defaults; keep the shared one clean
  W4A16_ASSERT_OK(local.status());
  const int m = 16, n = 1040, k = 1024, group = 64;
  Weights w;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, true, rng.alpha(), &p));
  const GemmArguments args = p.arguments(w);
  DeviceArray<uint8_t> workspace;
  ASSERT_NO_FATAL_FAILURE(workspace.allocate(max_workspace(m, n, k)));
  const auto& configs = local.configs();

  W4A16_EXPECT_CODE(local.profile(args, workspace.get(), workspace.bytes(), stream_, nullptr),
                    StatusCode::kInvalidArgument);
  ProfileResult result;
  W4A16_EXPECT_CODE(local.profile(args, workspace.get(), workspace.bytes(), stream_, &result, 0, 1),
                    StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(local.profile(args, workspace.get(), workspace.bytes(), stream_, &result, 1, 0),
                    StatusCode::kInvalidArgument);
  EXPECT_EQ(local.default_config(m, n, k, group), local.heuristic_config(m, n, k));

  W4A16_ASSERT_OK(local.profile(args, workspace.get(), workspace.bytes(), stream_, &result, 2, 2));
  ASSERT_FALSE(result.timings.empty());
  EXPECT_NE(std::find(configs.begin(), configs.end(), result.best), configs.end()) << result.best.name();
  EXPECT_EQ(result.timings.size() + result.skipped.size(), configs.size());
  float fastest = INFINITY;
  for (const auto& [config, microseconds] : result.timings) {
    EXPECT_GT(microseconds, 0.0f) << config.name();
    fastest = std::min(fastest, microseconds);
  }
  EXPECT_EQ(result.best_microseconds, fastest);
  for (const auto& [config, reason] : result.skipped) {
    EXPECT_FALSE(reason.empty()) << config.name();
    EXPECT_FALSE(local.check(args, config, workspace.get(), workspace.bytes()).ok()) << config.name() << " skipped";
  }
  EXPECT_EQ(local.default_config(m, n, k, group), result.best);
  EXPECT_EQ(local.workspace_bytes(m, n, k, group), local.workspace_bytes(m, n, k, result.best));
  // Other problems keep the heuristic.
  EXPECT_EQ(local.default_config(m, n, k, 128), local.heuristic_config(m, n, k));
  EXPECT_EQ(local.default_config(m + 1, n, k, group), local.heuristic_config(m + 1, n, k));

  // gemm() without a config now runs the profiled best, correctly.
  const Expected e = expected(w, p, {});
  {
    SCOPED_TRACE("after profile: " + describe(m, w, p, result.best));
    W4A16_ASSERT_CUDA(cudaMemsetAsync(workspace.get(), 0xFF, workspace.bytes(), stream_));
    ASSERT_NO_FATAL_FAILURE(p.out.poison(stream_));
    W4A16_ASSERT_OK(local.gemm(args, workspace.get(), workspace.bytes(), stream_));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<uint16_t> c;
    ASSERT_NO_FATAL_FAILURE(p.out.download(&c));
    EXPECT_TRUE(test::matches_reference(w.format.element, c, m, n, e.rows, e.reference, e.magnitude));
  }

  // Without workspace only the configs that need none are timed, and the best of those becomes the default.
  ProfileResult bare;
  W4A16_ASSERT_OK(local.profile(args, nullptr, 0, stream_, &bare, 1, 1));
  ASSERT_FALSE(bare.timings.empty());
  for (const auto& [config, microseconds] : bare.timings)
    EXPECT_EQ(local.workspace_bytes(m, n, k, config), 0u) << config.name() << " timed without its workspace";
  for (const auto& [config, reason] : bare.skipped) EXPECT_FALSE(reason.empty()) << config.name();
  EXPECT_EQ(local.default_config(m, n, k, group), bare.best);
  EXPECT_EQ(local.workspace_bytes(m, n, k, group), 0u);
}

// cuBLASLt's candidates need a and c 256-byte aligned: forced on a 16-byte aligned view of A a
// dequant_cublas_lt config is refused before any work; as the default (a loaded tuning entry) it
// falls back to cublasGemmEx there, and both views give the reference's result.
TEST_F(Gpu, CublasLtConfigsNeedAlignedOperandsAndTheirDefaultFallsBack) {
  W4A16_RANDOM(rng);
  GemmRunner local;  // load_tuning() changes the runner's defaults; keep the shared one clean
  W4A16_ASSERT_OK(local.status());
  KernelConfig lt;
  ASSERT_TRUE(parse_kernel_config("dequant_cublas_lt1", &lt));
  const auto& configs = local.configs();
  if (std::find(configs.begin(), configs.end(), lt) == configs.end()) GTEST_SKIP() << "no cuBLASLt configs";
  const int m = 5, n = 1040, k = 1024, group = 64;
  Weights w;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, /*use_bias=*/true, rng.alpha(), &p));
  const GemmArguments aligned_args = p.arguments(w);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(aligned_args.a) % 256, 0u);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(aligned_args.c) % 256, 0u);
  // The same A, 16 bytes past a 256-byte boundary (cudaMalloc's allocations are 256-byte aligned).
  std::vector<uint16_t> padded(8, 0);
  padded.insert(padded.end(), p.a.begin(), p.a.end());
  DeviceArray<uint16_t> shifted;
  ASSERT_NO_FATAL_FAILURE(shifted.upload(padded));
  GemmArguments view = aligned_args;
  view.a = shifted.get() + 8;
  ASSERT_EQ(reinterpret_cast<uintptr_t>(view.a) % 256, 16u);
  DeviceArray<uint8_t> workspace;
  ASSERT_NO_FATAL_FAILURE(workspace.allocate(local.workspace_bytes(m, n, k, lt)));
  const Expected e = expected(w, p, {});
  auto run_and_check = [&](const GemmArguments& args, const KernelConfig* config, const std::string& what) {
    SCOPED_TRACE(what);
    ASSERT_NO_FATAL_FAILURE(p.out.poison(stream_));
    if (config != nullptr) {
      W4A16_ASSERT_OK(local.gemm(args, *config, workspace.get(), workspace.bytes(), stream_));
    } else {
      W4A16_ASSERT_OK(local.gemm(args, workspace.get(), workspace.bytes(), stream_));
    }
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<uint16_t> c;
    ASSERT_NO_FATAL_FAILURE(p.out.download(&c));
    EXPECT_TRUE(test::matches_reference(w.format.element, c, m, n, e.rows, e.reference, e.magnitude));
  };
  ASSERT_NO_FATAL_FAILURE(run_and_check(aligned_args, &lt, "dequant_cublas_lt1, aligned"));
  ASSERT_NO_FATAL_FAILURE(p.out.poison(stream_));
  W4A16_EXPECT_CODE(local.gemm(view, lt, workspace.get(), workspace.bytes(), stream_), StatusCode::kMisalignedPointer);
  W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
  EXPECT_TRUE(p.out.untouched());
  KernelConfig gemm_ex;
  gemm_ex.family = KernelFamily::kDequantCublas;
  ASSERT_NO_FATAL_FAILURE(run_and_check(view, &gemm_ex, "dequant_cublas, 16-byte view"));

  // lt1 as this problem's default: a tuning file of this device with one entry naming it.
  const std::string path = ::testing::TempDir() + "w4a16_lt_default.json";
  W4A16_ASSERT_OK(local.save_tuning(path));  // nothing profiled yet: the device header, no entries
  std::stringstream text;
  text << std::ifstream(path).rdbuf();
  std::string document = text.str();
  const std::string empty = "\"entries\": []";
  const size_t at = document.find(empty);
  ASSERT_NE(at, std::string::npos) << document;
  document.replace(at, empty.size(),
                   "\"entries\": [{\"m_bucket\": " + std::to_string(tuning_m_bucket(m)) + ", \"n\": " +
                       std::to_string(n) + ", \"k\": " + std::to_string(k) + ", \"group_size\": " +
                       std::to_string(group) + ", \"format\": \"" + format_name(w.format) +
                       "\", \"config\": \"dequant_cublas_lt1\"}]");
  std::ofstream(path) << document;
  W4A16_ASSERT_OK(local.load_tuning(path));
  ASSERT_EQ(local.default_config(m, n, k, group, w.format), lt);
  ASSERT_NO_FATAL_FAILURE(run_and_check(aligned_args, nullptr, "dequant_cublas_lt1 as the default, aligned"));
  ASSERT_NO_FATAL_FAILURE(run_and_check(view, nullptr, "dequant_cublas_lt1 as the default, 16-byte view"));
}

// =============================================================================================
// CUDA graph capture on a non-default stream.

TEST_F(Gpu, GemmCanBeCapturedInAGraph) {
  W4A16_RANDOM(rng);
  const int m = 17, n = 1040, k = 2048, group = 64;
  Weights w;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w));
  Problem p;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, true, rng.alpha(), &p));
  const GemmArguments args = p.arguments(w);
  const Expected e = expected(w, p, {});

  std::vector<KernelConfig> captured;  // a split-K config (kernel + reduce, through the workspace), and cuBLAS
  for (const KernelConfig& config : runner().configs())
    if (config.family == KernelFamily::kMultistage && config.split_k == 4) {
      captured.push_back(config);
      break;
    }
  for (const KernelConfig& config : runner().configs())
    if (config.family == KernelFamily::kDequantCublas) captured.push_back(config);
  if (runner().sm_version() >= 80) { ASSERT_FALSE(captured.empty() || captured[0].split_k != 4); }

  for (const KernelConfig& config : captured) {
    SCOPED_TRACE(describe(m, w, p, config));
    DeviceArray<uint8_t> workspace;
    ASSERT_NO_FATAL_FAILURE(workspace.allocate(runner().workspace_bytes(m, n, k, config)));
    ASSERT_GT(workspace.bytes(), 0u);
    ASSERT_NO_FATAL_FAILURE(p.out.poison(stream_));
    ASSERT_NO_FATAL_FAILURE(workspace.fill_bytes(0xFF, stream_));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));

    cudaGraph_t graph = nullptr;
    W4A16_ASSERT_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
    const Status status = runner().gemm(args, config, workspace.get(), workspace.bytes(), stream_);
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);  // always end the capture
    W4A16_ASSERT_OK(status);
    ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end);
    ASSERT_NE(graph, nullptr);
    size_t nodes = 0;
    W4A16_EXPECT_CUDA(cudaGraphGetNodes(graph, nullptr, &nodes));
    EXPECT_GT(nodes, 0u);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
    W4A16_EXPECT_CUDA(cudaGraphDestroy(graph));
    ASSERT_EQ(instantiated, cudaSuccess) << cudaGetErrorString(instantiated);
    // Capturing ran nothing.
    EXPECT_TRUE(p.out.untouched()) << "C written during capture";

    std::vector<uint16_t> first, second;
    W4A16_EXPECT_CUDA(cudaGraphLaunch(exec, stream_));
    W4A16_EXPECT_CUDA(cudaStreamSynchronize(stream_));
    ASSERT_NO_FATAL_FAILURE(p.out.download(&first));
    EXPECT_TRUE(test::all_finite(w.format.element, first, m, n));
    EXPECT_TRUE(test::matches_reference(w.format.element, first, m, n, e.rows, e.reference, e.magnitude));
    // Replay over fresh poison: the same bits.
    ASSERT_NO_FATAL_FAILURE(p.out.poison(stream_));
    ASSERT_NO_FATAL_FAILURE(workspace.fill_bytes(0x7F, stream_));
    W4A16_EXPECT_CUDA(cudaGraphLaunch(exec, stream_));
    W4A16_EXPECT_CUDA(cudaStreamSynchronize(stream_));
    ASSERT_NO_FATAL_FAILURE(p.out.download(&second));
    EXPECT_EQ(first, second) << "replays differ";
    W4A16_EXPECT_CUDA(cudaGraphExecDestroy(exec));
  }
}

// =============================================================================================
// Programmatic dependent launch (on by default on sm_90): each kernel may start while the previous
// one in the stream is finishing, so a call that reads the previous call's output is the case that
// must still see that output, not the poison under it: as activations, and as weights (before its
// wait a kernel may only warm L2 with its weights, never copy them).

// One config per fused family (with and without split-K), and the default.
std::vector<KernelConfig> one_config_per_family(const GemmRunner& runner, int m, int n, int k, int group) {
  std::vector<KernelConfig> configs = {runner.default_config(m, n, k, group)};
  std::set<std::pair<KernelFamily, bool>> seen;
  for (const KernelConfig& config : runner.configs()) {
    if (!config.fused() || (config.split_k != 1 && config.split_k != 4)) continue;
    if (seen.insert({config.family, config.split_k > 1}).second) configs.push_back(config);
  }
  return configs;
}

TEST_F(Gpu, ProgrammaticLaunchSeesThePreviousCallsOutput) {
  GemmRunner pdl_runner;
  W4A16_ASSERT_OK(pdl_runner.status());
  pdl_runner.set_programmatic_launch(GemmRunner::ProgrammaticLaunch::kAlways);
  W4A16_RANDOM(rng);
  // A long first call, so that the second one's blocks start while it is still running; on H100
  // its default (streaming) grid fills the GPU, so it also lets the second call launch at its entry.
  const int m = 5, n1 = 4096, k = 4096, n2 = 512, group = 128;
  Weights w1, w2;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n1, k, group, &w1));
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n2, n1, group, &w2));
  Problem first;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, w1, m, /*use_bias=*/true, rng.alpha(), &first));
  Output second;  // its activations are the first call's C, on the device only
  ASSERT_NO_FATAL_FAILURE(second.allocate(m, n2));

  for (const KernelConfig& config : one_config_per_family(pdl_runner, m, n1, k, group)) {
    SCOPED_TRACE(config.name());
    GemmArguments args1 = first.arguments(w1);
    GemmArguments args2 = args1;
    args2.a = first.out.c();
    args2.packed_weights = w2.packed.get();
    args2.scales = w2.scales.get();
    args2.bias = nullptr;
    args2.c = second.c();
    args2.n = n2;
    args2.k = n1;
    args2.alpha = 1.0f;
    DeviceArray<uint8_t> workspace;
    ASSERT_NO_FATAL_FAILURE(workspace.allocate(std::max(pdl_runner.workspace_bytes(m, n1, k, config),
                                                        pdl_runner.workspace_bytes(m, n2, n1, config))));
    ASSERT_NO_FATAL_FAILURE(first.out.poison(stream_));
    ASSERT_NO_FATAL_FAILURE(second.poison(stream_));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));
    W4A16_ASSERT_OK(pdl_runner.gemm(args1, config, workspace.get(), workspace.bytes(), stream_));
    W4A16_ASSERT_OK(pdl_runner.gemm(args2, config, workspace.get(), workspace.bytes(), stream_));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream_));

    std::vector<uint16_t> c1, c2;
    ASSERT_NO_FATAL_FAILURE(first.out.download(&c1));
    ASSERT_NO_FATAL_FAILURE(second.download(&c2));
    ASSERT_TRUE(test::all_finite(w1.format.element, c1, m, n1));
    // The second call against the reference on the first call's actual output.
    std::vector<double> reference;
    W4A16_ASSERT_OK(reference_gemm(c1.data(), m, w2.q, nullptr, 1.0f, {}, &reference));
    const std::vector<double> magnitude = test::reference_magnitude(c1, m, w2.q, 1.0f, {});
    EXPECT_TRUE(test::all_finite(w2.format.element, c2, m, n2)) << "the second call read poison: it did not wait for the first";
    EXPECT_TRUE(test::matches_reference(w2.format.element, c2, m, n2, {}, reference, magnitude));
  }
}

// The previous kernel writes every input of the GEMM (activations, packed weights, scales) after
// the GEMM has launched behind it: whatever a kernel read before its griddepcontrol.wait would be
// the old data, a different valid problem, so the result would miss the reference. It also then
// writes junk over C and the split-K workspace: a store made before the wait would be overwritten.
// k = 256 with split-K 4 gives the warp-specialized tiles empty slices (no slot to consume).
// With `act_order`, the call also gathers A through a k_permutation: the gather too must read A only
// after its wait, and write the gathered copy into the workspace only after the previous kernel's
// writes (the delayed copy's junk lands there first).
void check_inputs_written_by_previous_kernel(GemmRunner& pdl_runner, cudaStream_t stream, Random& rng, int k,
                                             bool act_order = false) {
  SCOPED_TRACE("k " + std::to_string(k) + (act_order ? ", act-order" : ""));
  const int m = 5, n = 2048, group = 128;
  Weights stale_weights, weights;
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &stale_weights));
  ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &weights));
  Problem stale, problem;
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, stale_weights, m, /*use_bias=*/true, 1.0f, &stale));
  ASSERT_NO_FATAL_FAILURE(make_problem(rng, weights, m, /*use_bias=*/true, 1.0f, &problem));
  problem.bias = stale.bias;  // the bias is not rewritten: the same in both problems
  std::vector<int32_t> permutation(k);
  for (int j = 0; j < k; ++j) permutation[j] = j;
  if (act_order) std::shuffle(permutation.begin(), permutation.end(), rng.engine());
  DeviceArray<int32_t> d_permutation;
  ASSERT_NO_FATAL_FAILURE(d_permutation.upload(permutation));
  Expected e;
  {
    std::vector<uint16_t> permuted(problem.a.size());
    for (int r = 0; r < m; ++r)
      for (int j = 0; j < k; ++j) permuted[size_t(r) * k + j] = problem.a[size_t(r) * k + permutation[j]];
    W4A16_ASSERT_OK(reference_gemm(permuted.data(), m, weights.q, problem.bias.data(), 1.0f, {}, &e.reference));
    e.magnitude = test::reference_magnitude(permuted, m, weights.q, 1.0f, {});
  }
  // The GEMM runs on the stale buffers, which the delayed copy overwrites with the fresh problem.
  GemmArguments args = problem.arguments(weights);
  args.a = stale.d_a.get();
  args.packed_weights = stale_weights.packed.get();
  args.scales = stale_weights.scales.get();
  args.bias = stale.d_bias.get();
  if (act_order) args.k_permutation = d_permutation.get();
  std::vector<uint8_t> stale_packed;
  W4A16_ASSERT_OK(pack_weights(stale_weights.q, &stale_packed));

  for (const KernelConfig& config : one_config_per_family(pdl_runner, m, n, k, group)) {
    SCOPED_TRACE(config.name());
    DeviceArray<uint8_t> workspace, junk;
    ASSERT_NO_FATAL_FAILURE(workspace.allocate(pdl_runner.workspace_bytes(args, config)));
    const size_t c_bytes = size_t(m) * n * sizeof(uint16_t);
    ASSERT_NO_FATAL_FAILURE(junk.allocate(std::max(c_bytes, workspace.bytes())));
    ASSERT_NO_FATAL_FAILURE(junk.fill_bytes(0x7F, stream));  // fp16 ~6.5e4, fp32 ~3.4e38
    test::DelayedCopy job;
    job.destination[0] = stale.d_a.get();
    job.source[0] = problem.d_a.get();
    job.bytes[0] = size_t(m) * k * sizeof(uint16_t);
    job.destination[1] = stale_weights.packed.get();
    job.source[1] = weights.packed.get();
    job.bytes[1] = size_t(n) * k / 2;
    job.destination[2] = stale_weights.scales.get();
    job.source[2] = weights.scales.get();
    job.bytes[2] = size_t(k / group) * n * sizeof(uint16_t);
    job.destination[3] = problem.out.c();
    job.source[3] = junk.get();
    job.bytes[3] = c_bytes;
    job.destination[4] = workspace.get();
    job.source[4] = junk.get();
    job.bytes[4] = workspace.bytes();
    // 1 ms: far longer than the host's way from this launch to the GEMM's.
    job.delay_nanoseconds = 1000000;
    // Restore the stale inputs (the previous config's copy overwrote them), in stream order.
    W4A16_ASSERT_CUDA(cudaMemcpyAsync(stale.d_a.get(), stale.a.data(), job.bytes[0], cudaMemcpyHostToDevice, stream));
    W4A16_ASSERT_CUDA(
        cudaMemcpyAsync(stale_weights.packed.get(), stale_packed.data(), job.bytes[1], cudaMemcpyHostToDevice, stream));
    W4A16_ASSERT_CUDA(cudaMemcpyAsync(stale_weights.scales.get(), stale_weights.q.scales.data(), job.bytes[2],
                                      cudaMemcpyHostToDevice, stream));
    ASSERT_NO_FATAL_FAILURE(problem.out.poison(stream));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream));
    W4A16_ASSERT_CUDA(test::launch_delayed_copy(job, stream));
    W4A16_ASSERT_OK(pdl_runner.gemm(args, config, workspace.get(), workspace.bytes(), stream));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream));
    std::vector<uint16_t> c;
    ASSERT_NO_FATAL_FAILURE(problem.out.download(&c));
    EXPECT_TRUE(test::matches_reference(weights.format.element, c, m, n, {}, e.reference, e.magnitude))
        << "the GEMM read an input before the previous kernel wrote it, or wrote C or the workspace before";
  }
}

TEST_F(Gpu, ProgrammaticLaunchSeesInputsThePreviousKernelWrote) {
  GemmRunner pdl_runner;
  W4A16_ASSERT_OK(pdl_runner.status());
  pdl_runner.set_programmatic_launch(GemmRunner::ProgrammaticLaunch::kAlways);
  if (pdl_runner.programmatic_launch() == GemmRunner::ProgrammaticLaunch::kOff) {
    GTEST_SKIP() << "programmatic dependent launch needs sm_90 or later";
  }
  W4A16_RANDOM(rng);
  ASSERT_NO_FATAL_FAILURE(check_inputs_written_by_previous_kernel(pdl_runner, stream_, rng, 1024));
  ASSERT_NO_FATAL_FAILURE(check_inputs_written_by_previous_kernel(pdl_runner, stream_, rng, 256));
  ASSERT_NO_FATAL_FAILURE(check_inputs_written_by_previous_kernel(pdl_runner, stream_, rng, 1024, /*act_order=*/true));
}


// =============================================================================================
// Act-order (GemmArguments::k_permutation): A's columns gathered into the weights' k order, on
// every family and format, against the reference over the host-permuted A; the workspace the
// gather needs is counted and enforced.

class ActOrder : public Gpu, public ::testing::WithParamInterface<Format> {
 protected:
  // A random permutation of k, then every family at each m against the host-permuted reference.
  void check(Random& rng, const std::vector<int>& ms, int n, int k, int group, Format format) {
    Weights w;
    ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &w, format));
    std::vector<int32_t> permutation(k);
    for (int j = 0; j < k; ++j) permutation[j] = j;
    std::shuffle(permutation.begin(), permutation.end(), rng.engine());
    DeviceArray<int32_t> d_permutation;
    ASSERT_NO_FATAL_FAILURE(d_permutation.upload(permutation));

    for (int m : ms) {
      Problem p;
      ASSERT_NO_FATAL_FAILURE(make_problem(rng, w, m, /*use_bias=*/true, rng.alpha(), &p));
      GemmArguments args = p.arguments(w);
      args.k_permutation = d_permutation.get();
      std::vector<uint16_t> permuted(size_t(m) * k);
      for (int r = 0; r < m; ++r)
        for (int j = 0; j < k; ++j) permuted[size_t(r) * k + j] = p.a[size_t(r) * k + permutation[j]];
      std::vector<double> reference;
      W4A16_ASSERT_OK(reference_gemm(permuted.data(), m, w.q, p.bias.data(), p.alpha, {}, &reference));
      const std::vector<double> magnitude = test::reference_magnitude(permuted, m, w.q, p.alpha, {});

      std::vector<KernelConfig> configs = one_config_per_family(runner(), m, n, k, group);
      for (const KernelConfig& config : runner().configs())
        if (config.family == KernelFamily::kDequantCublas) configs.push_back(config);
      for (const KernelConfig& config : configs) {
        if (!test::family_selected(config.family)) continue;
        SCOPED_TRACE(describe(m, w, p, config) + ", act-order");
        const size_t needed = runner().workspace_bytes(args, config);
        EXPECT_GE(needed, runner().workspace_bytes(m, n, k, config) + size_t(m) * k * 2);
        DeviceArray<uint8_t> workspace;
        ASSERT_NO_FATAL_FAILURE(workspace.allocate(needed));
        // Without room for the gathered A the call is refused.
        W4A16_EXPECT_CODE(runner().check(args, config, workspace.get(), needed - 256), StatusCode::kWorkspaceTooSmall);
        std::vector<uint16_t> c;
        ASSERT_NO_FATAL_FAILURE(run(args, &config, workspace, p.out, &c));
        EXPECT_TRUE(test::all_finite(w.format.element, c, m, n));
        EXPECT_TRUE(test::matches_reference(w.format.element, c, m, n, {}, reference, magnitude));
      }
    }
  }
};

// Both gather kernels (direct below 64 rows, row-staged from 64) in every format.
TEST_P(ActOrder, MatchesThePermutedReference) {
  W4A16_RANDOM(rng);
  ASSERT_NO_FATAL_FAILURE(check(rng, {1, 17, 300}, 272, 1088, 64, GetParam()));
}

// The staged kernel's edges: more rows than its grid (4096 blocks, so blocks take a second row),
// and a row past one batch of its loads (512 threads x 4 x 8 = 16384 columns; k = 16512 = 129
// groups of 128).
TEST_F(ActOrder, StagedGatherEdges) {
  W4A16_RANDOM(rng);
  ASSERT_NO_FATAL_FAILURE(check(rng, {4100}, 80, 256, 64, Format{}));
  ASSERT_NO_FATAL_FAILURE(check(rng, {64}, 80, 16512, 128, Format{ElementType::kBFloat16, QuantOp::kScaleAndZeros}));
}

INSTANTIATE_TEST_SUITE_P(Formats, ActOrder, ::testing::ValuesIn(kAllFormats),
                         [](const ::testing::TestParamInfo<Format>& info) { return format_tag(info.param); });

// =============================================================================================
// Concurrency (runner.h): gemm() may be called from several host threads at once, each on its own
// stream, workspace and output, and two runners may work side by side. Every thread's results must
// equal the serial ones bit for bit, over every family (cuBLAS's shared handle included) and format.

struct ConcurrentJob {
  Weights w;
  Problem p;
  KernelConfig config;
  std::vector<uint16_t> serial;  // C from a lone, serial call
};

// One job per (format, family config): a 33 x 1040 x 2048 problem, the fused families with and
// without split-K, and dequant_cublas.
void make_concurrent_jobs(Random& rng, const GemmRunner& runner, std::vector<std::unique_ptr<ConcurrentJob>>* jobs) {
  const int m = 33, n = 1040, k = 2048, group = 128;
  for (const Format& format : kAllFormats) {
    std::vector<KernelConfig> configs = one_config_per_family(runner, m, n, k, group);
    for (const KernelConfig& config : runner.configs())
      if (config.family == KernelFamily::kDequantCublas) configs.push_back(config);
    for (const KernelConfig& config : configs) {
      auto job = std::make_unique<ConcurrentJob>();
      ASSERT_NO_FATAL_FAILURE(make_weights(rng, n, k, group, &job->w, format));
      ASSERT_NO_FATAL_FAILURE(make_problem(rng, job->w, m, /*use_bias=*/true, rng.alpha(), &job->p));
      job->config = config;
      jobs->push_back(std::move(job));
    }
  }
}

// Runs every job `rounds` times on `stream` (starting at job `first`, so threads interleave
// different kernels), each into its own C, and downloads the last round's results. Returns the
// first failure as text (gtest's ASSERTs do not cross threads).
// The start line of a concurrency test's threads: each waits at it once, after its setup, so that
// their calls overlap instead of running one thread after another; a thread that fails before it
// still passes it on leaving, so that no other thread waits forever.
class StartLine {
 public:
  StartLine(std::atomic<int>* passed, int parties) : passed_(passed), parties_(parties) {}
  StartLine(const StartLine&) = delete;
  StartLine& operator=(const StartLine&) = delete;
  ~StartLine() {
    if (!waited_) passed_->fetch_add(1);
  }
  void wait() {
    waited_ = true;
    passed_->fetch_add(1);
    while (passed_->load() < parties_) std::this_thread::yield();
  }

 private:
  std::atomic<int>* passed_;
  int parties_;
  bool waited_ = false;
};

std::string run_jobs(const GemmRunner& runner, const std::vector<std::unique_ptr<ConcurrentJob>>& jobs, size_t first,
                     int rounds, std::vector<std::vector<uint16_t>>* results, StartLine* start) {
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) return "cudaStreamCreate failed";
  std::string failure;
  std::vector<void*> outputs(jobs.size(), nullptr), workspaces(jobs.size(), nullptr);
  std::vector<size_t> workspace_sizes(jobs.size(), 0);
  for (size_t j = 0; j < jobs.size() && failure.empty(); ++j) {
    const GemmArguments args = jobs[j]->p.arguments(jobs[j]->w);
    workspace_sizes[j] = runner.workspace_bytes(args, jobs[j]->config);
    if (cudaMalloc(&outputs[j], size_t(args.m) * args.n * 2) != cudaSuccess ||
        (workspace_sizes[j] > 0 && cudaMalloc(&workspaces[j], workspace_sizes[j]) != cudaSuccess)) {
      failure = "cudaMalloc failed";
    }
  }
  start->wait();
  for (int round = 0; round < rounds && failure.empty(); ++round) {
    for (size_t i = 0; i < jobs.size() && failure.empty(); ++i) {
      const size_t j = (first + i) % jobs.size();
      GemmArguments args = jobs[j]->p.arguments(jobs[j]->w);
      args.c = outputs[j];
      if (cudaMemsetAsync(outputs[j], 0xFF, size_t(args.m) * args.n * 2, stream) != cudaSuccess) failure = "memset";
      const Status status = runner.gemm(args, jobs[j]->config, workspaces[j], workspace_sizes[j], stream);
      if (!status.ok()) failure = jobs[j]->config.name() + ": " + status.to_string();
    }
  }
  if (cudaStreamSynchronize(stream) != cudaSuccess && failure.empty()) failure = "a kernel failed";
  results->assign(jobs.size(), {});
  for (size_t j = 0; j < jobs.size() && failure.empty(); ++j) {
    const GemmArguments args = jobs[j]->p.arguments(jobs[j]->w);
    (*results)[j].resize(size_t(args.m) * args.n);
    if (cudaMemcpy((*results)[j].data(), outputs[j], (*results)[j].size() * 2, cudaMemcpyDeviceToHost) != cudaSuccess)
      failure = "download failed";
  }
  for (size_t j = 0; j < jobs.size(); ++j) {
    cudaFree(outputs[j]);
    if (workspaces[j] != nullptr) cudaFree(workspaces[j]);
  }
  cudaStreamDestroy(stream);
  return failure;
}

void expect_serial_results(const std::vector<std::unique_ptr<ConcurrentJob>>& jobs,
                           const std::vector<std::vector<uint16_t>>& results, int thread) {
  for (size_t j = 0; j < jobs.size(); ++j) {
    EXPECT_TRUE(results[j] == jobs[j]->serial)
        << "thread " << thread << ", " << format_name(jobs[j]->w.format) << ", config " << jobs[j]->config.name()
        << ": differs from the serial result";
  }
}

class Concurrency : public Gpu {
 protected:
  void make_jobs(Random& rng) {
    ASSERT_NO_FATAL_FAILURE(make_concurrent_jobs(rng, runner(), &jobs_));
    for (auto& job : jobs_) {
      SCOPED_TRACE(describe(job->p.m, job->w, job->p, job->config));
      DeviceArray<uint8_t> workspace;
      ASSERT_NO_FATAL_FAILURE(workspace.allocate(runner().workspace_bytes(job->p.arguments(job->w), job->config)));
      ASSERT_NO_FATAL_FAILURE(run(job->p.arguments(job->w), &job->config, workspace, job->p.out, &job->serial));
      const Expected e = expected(job->w, job->p, {});
      EXPECT_TRUE(test::matches_reference(job->w.format.element, job->serial, job->p.m, job->w.n, e.rows, e.reference,
                                          e.magnitude));
    }
  }
  // `count` host threads, each with the runner's device current (the current device is per
  // thread), each running body(t, its start line, its results) -> the first failure as text (""
  // for none); then every thread's results against the serial ones.
  using Results = std::vector<std::vector<uint16_t>>;
  void run_threads(int count, const std::function<std::string(int, StartLine*, Results*)>& body) {
    std::vector<Results> results(count);
    std::vector<std::string> failures(count);
    std::atomic<int> passed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < count; ++t) {
      threads.emplace_back([&, t] {
        StartLine start(&passed, count);
        failures[t] = cudaSetDevice(runner().device()) != cudaSuccess ? "cudaSetDevice failed"
                                                                       : body(t, &start, &results[t]);
      });
    }
    for (auto& thread : threads) thread.join();
    for (int t = 0; t < count; ++t) {
      ASSERT_EQ(failures[t], "") << "thread " << t;
      expect_serial_results(jobs_, results[t], t);
    }
  }

  std::vector<std::unique_ptr<ConcurrentJob>> jobs_;
  static constexpr int kThreads = 4;
  static constexpr int kRounds = 8;
};

TEST_F(Concurrency, OneRunnerFromSeveralThreadsAtOnce) {
  W4A16_RANDOM(rng);
  ASSERT_NO_FATAL_FAILURE(make_jobs(rng));
  ASSERT_NO_FATAL_FAILURE(run_threads(kThreads, [&](int t, StartLine* start, Results* results) {
    return run_jobs(runner(), jobs_, size_t(t) * jobs_.size() / kThreads, kRounds, results, start);
  }));
}

// The one piece of shared mutable state behind gemm(): the dequant_cublas path's cuBLAS handle
// (stream and workspace set per call, under the runner's mutex). Eight threads hammer only that
// path, released together, so that without the mutex their set-stream / set-workspace / GEMM
// sequences would interleave and some GEMM would run on another thread's stream or workspace.
TEST_F(Concurrency, DequantCublasCallsFromEightThreads) {
  W4A16_RANDOM(rng);
  ASSERT_NO_FATAL_FAILURE(make_jobs(rng));
  jobs_.erase(std::remove_if(jobs_.begin(), jobs_.end(),
                             [](const auto& job) { return job->config.family != KernelFamily::kDequantCublas; }),
              jobs_.end());
  ASSERT_FALSE(jobs_.empty());
  constexpr int kContending = 8;
  ASSERT_NO_FATAL_FAILURE(run_threads(kContending, [&](int t, StartLine* start, Results* results) {
    return run_jobs(runner(), jobs_, size_t(t) % jobs_.size(), 40, results, start);
  }));
}

TEST_F(Concurrency, TwoRunnersOnTwoThreads) {
  W4A16_RANDOM(rng);
  ASSERT_NO_FATAL_FAILURE(make_jobs(rng));
  constexpr int kRunners = 2;
  ASSERT_NO_FATAL_FAILURE(run_threads(kRunners, [&](int t, StartLine* start, Results* results) {
    GemmRunner own;  // constructed on this thread
    if (!own.status().ok()) return own.status().to_string();
    return run_jobs(own, jobs_, size_t(t) * jobs_.size() / kRunners, kRounds, results, start);
  }));
}

}  // namespace
}  // namespace w4a16
