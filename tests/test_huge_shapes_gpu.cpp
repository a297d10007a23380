// Problems whose element counts pass 2^31 (m*k, m*n or n*k), with every kernel family forced:
// the 64-bit index math of the kernels, the host packer and the CPU reference, proven on shapes
// that would wrap a 32-bit index. The activations are filled on the GPU from a hash (a 70000 x
// 32768 matrix is 4.6 GB) and only sampled rows go through the CPU reference; the whole of C is
// checked finite on the device. Each case takes seconds to a minute (mostly host work), so
// tools/gpu-check.sh's sanitizer filters leave this suite out.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "device_fill.h"
#include "host/parallel.h"
#include "test_util.h"
#include "w4a16/w4a16.h"

namespace w4a16 {
namespace {

using test::DeviceArray;

struct HugeShape {
  int m, n, k, group;
  Format format;
  const char* what;  // which element count passes 2^31
  bool act_order = false;  // a random k_permutation: the gather's 64-bit row offsets too
};

std::string name_of(const ::testing::TestParamInfo<HugeShape>& info) {
  const HugeShape& s = info.param;
  return test::format_tag(s.format) +
         "_m" + std::to_string(s.m) + "_n" + std::to_string(s.n) + "_k" + std::to_string(s.k) +
         (s.act_order ? "_act_order" : "");
}

// Random codes, scales and (fractional or integer) zero points, built directly: quantize() of a
// 65536 x 36864 float matrix would need 9.4 GB. Codes come from the hash, one row per task.
void make_weights(test::Random& rng, const HugeShape& shape, QuantizedWeights* q) {
  q->n = shape.n;
  q->k = shape.k;
  q->group_size = shape.group;
  q->element = shape.format.element;
  q->codes.resize(size_t(shape.n) * shape.k);
  const uint64_t seed = rng.engine()();
  parallel_ranges(shape.n, [&](int begin, int end) {
    for (int row = begin; row < end; ++row) {
      for (int col = 0; col < shape.k; ++col) {
        const size_t i = size_t(row) * shape.k + col;
        // hashed_value is a multiple of 1/128 in [-1, 1]: 257 levels, folded to 16.
        q->codes[i] = uint8_t(int(test::hashed_value(seed, i) * 128.0f + 128.0f) % 16);
      }
    }
  });
  const size_t groups = size_t(shape.k / shape.group) * shape.n;
  q->scales = rng.elements(shape.format.element, groups, 0.002f, 0.02f);
  if (has_zeros(shape.format.quant)) {
    // Whole numbers for kScaleAndZeros, a quarter-step fraction on most for the float op.
    const int fraction_steps = shape.format.quant == QuantOp::kScaleAndFloatZeros ? 3 : 0;
    q->zeros.resize(groups);
    q->float_zeros = fraction_steps > 0;
    for (uint16_t& zero : q->zeros) {
      zero = float_to_element(shape.format.element,
                              float(rng.uniform_int(0, 15)) + 0.25f * rng.uniform_int(0, fraction_steps));
    }
  }
}

// For each kernel family the runner lists, one config that takes the shape: the default if it is
// of that family, else the family's widest single-split tile (the fastest over a huge m).
std::vector<KernelConfig> widest_config_per_family(const GemmRunner& runner, const GemmArguments& args) {
  const KernelConfig default_config = runner.default_config(args.m, args.n, args.k, args.group_size, args.format());
  std::vector<KernelConfig> picked = {default_config};
  std::set<KernelFamily> families = {default_config.family};
  for (const KernelConfig& config : runner.configs()) {
    if (families.count(config.family) != 0) continue;
    const KernelConfig* best = nullptr;
    for (const KernelConfig& other : runner.configs()) {
      if (other.family != config.family || other.split_k != 1) continue;
      if (best == nullptr || other.tile_m * other.tile_n > best->tile_m * best->tile_n) best = &other;
    }
    picked.push_back(best != nullptr ? *best : config);
    families.insert(config.family);
  }
  return picked;
}

class HugeShapes : public ::testing::TestWithParam<HugeShape> {
 protected:
  void SetUp() override { W4A16_REQUIRE_GPU(); }
};

TEST_P(HugeShapes, SampledRowsMatchTheReference) {
  W4A16_RANDOM(rng);
  const HugeShape shape = GetParam();
  const int m = shape.m, n = shape.n, k = shape.k;
  const ElementType element = shape.format.element;
  SCOPED_TRACE(std::string(shape.what) + ", " + format_name(shape.format));
  GemmRunner runner;
  W4A16_ASSERT_OK(runner.status());
  cudaStream_t stream = nullptr;
  W4A16_ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  // Weights on the host (the packer and the reference at 64-bit sizes), then on the device.
  QuantizedWeights q;
  make_weights(rng, shape, &q);
  std::vector<uint8_t> packed;
  W4A16_ASSERT_OK(pack_weights(q, &packed));
  ASSERT_EQ(packed.size(), size_t(n) * k / 2);
  if (size_t(n) * k > (size_t(1) << 31)) {
    std::vector<uint8_t> unpacked;
    W4A16_ASSERT_OK(unpack_weights(packed.data(), n, k, &unpacked));
    ASSERT_TRUE(unpacked == q.codes) << "unpack_weights(pack_weights(codes)) != codes";
  }
  DeviceArray<uint8_t> d_packed;
  DeviceArray<uint16_t> d_scales, d_zeros, d_bias, d_a, d_c;
  ASSERT_NO_FATAL_FAILURE(d_packed.upload(packed));
  std::vector<uint8_t>().swap(packed);
  ASSERT_NO_FATAL_FAILURE(d_scales.upload(q.scales));
  if (!q.zeros.empty()) { ASSERT_NO_FATAL_FAILURE(d_zeros.upload(q.zeros)); }
  const std::vector<uint16_t> bias = rng.elements(element, size_t(n), -1.0f, 1.0f);
  ASSERT_NO_FATAL_FAILURE(d_bias.upload(bias));

  // Activations hashed on the device; the sampled rows recomputed on the host.
  const uint64_t a_seed = rng.engine()();
  ASSERT_NO_FATAL_FAILURE(d_a.allocate(size_t(m) * k));
  W4A16_ASSERT_CUDA(test::fill_hashed(d_a.get(), d_a.size(), a_seed, element, stream));
  ASSERT_NO_FATAL_FAILURE(d_c.allocate(size_t(m) * n));
  std::vector<int> rows = {0, 1, m / 2, m - 2, m - 1};
  for (int i = 0; i < 4; ++i) rows.push_back(rng.uniform_int(0, m - 1));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  rows.erase(std::remove_if(rows.begin(), rows.end(), [&](int r) { return r < 0 || r >= m; }), rows.end());
  // With act-order the weights' column j multiplies A's column permutation[j].
  std::vector<int32_t> permutation(k);
  for (int j = 0; j < k; ++j) permutation[j] = j;
  if (shape.act_order) std::shuffle(permutation.begin(), permutation.end(), rng.engine());
  DeviceArray<int32_t> d_permutation;
  ASSERT_NO_FATAL_FAILURE(d_permutation.upload(permutation));
  std::vector<uint16_t> a_rows(rows.size() * size_t(k));
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int col = 0; col < k; ++col) {
      a_rows[r * k + col] =
          float_to_element(element, test::hashed_value(a_seed, size_t(rows[r]) * k + size_t(permutation[col])));
    }
  }
  const float alpha = rng.alpha();
  std::vector<double> reference;
  W4A16_ASSERT_OK(reference_gemm(a_rows.data(), int(rows.size()), q, bias.data(), alpha, {}, &reference));
  const std::vector<double> magnitude = test::reference_magnitude(a_rows, int(rows.size()), q, alpha, {});

  GemmArguments args;
  args.a = d_a.get();
  args.packed_weights = d_packed.get();
  args.scales = d_scales.get();
  args.zeros = q.zeros.empty() ? nullptr : d_zeros.get();
  args.float_zeros = q.float_zeros;
  args.bias = d_bias.get();
  args.c = d_c.get();
  args.element = element;
  args.m = m;
  args.n = n;
  args.k = k;
  args.group_size = shape.group;
  args.alpha = alpha;
  if (shape.act_order) args.k_permutation = d_permutation.get();

  std::set<KernelFamily> ran;
  for (const KernelConfig& config : widest_config_per_family(runner, args)) {
    if (!test::family_selected(config.family)) continue;
    SCOPED_TRACE("config " + config.name());
    DeviceArray<uint8_t> workspace;
    ASSERT_NO_FATAL_FAILURE(workspace.allocate(runner.workspace_bytes(args, config)));
    ASSERT_NO_FATAL_FAILURE(d_c.fill_bytes(0xFF, stream));  // NaN in either type
    cudaEvent_t start, stop;
    W4A16_ASSERT_CUDA(cudaEventCreate(&start));
    W4A16_ASSERT_CUDA(cudaEventCreate(&stop));
    W4A16_ASSERT_CUDA(cudaEventRecord(start, stream));
    W4A16_ASSERT_OK(runner.gemm(args, config, workspace.get(), workspace.bytes(), stream));
    W4A16_ASSERT_CUDA(cudaEventRecord(stop, stream));
    W4A16_ASSERT_CUDA(cudaStreamSynchronize(stream));
    W4A16_ASSERT_CUDA(cudaGetLastError());
    float milliseconds = 0.0f;
    W4A16_EXPECT_CUDA(cudaEventElapsedTime(&milliseconds, start, stop));
    W4A16_EXPECT_CUDA(cudaEventDestroy(start));
    W4A16_EXPECT_CUDA(cudaEventDestroy(stop));

    unsigned long long non_finite = 0;
    W4A16_ASSERT_CUDA(test::count_non_finite(d_c.get(), d_c.size(), element, stream, &non_finite));
    EXPECT_EQ(non_finite, 0u) << "outputs left unwritten or not finite";
    std::vector<uint16_t> c_rows(rows.size() * size_t(n));
    for (size_t r = 0; r < rows.size(); ++r) {
      W4A16_ASSERT_CUDA(cudaMemcpy(c_rows.data() + r * n, d_c.get() + size_t(rows[r]) * n, size_t(n) * 2,
                                   cudaMemcpyDeviceToHost));
    }
    EXPECT_TRUE(test::matches_reference(element, c_rows, int(rows.size()), n, {}, reference, magnitude));
    std::printf("%s %dx%dx%d %s: %.2f ms\n", format_name(shape.format), m, n, k, config.name().c_str(),
                milliseconds);
    ran.insert(config.family);
  }
  // Every family this device offers (and the run selected) took the shape.
  for (const KernelConfig& config : runner.configs()) {
    if (test::family_selected(config.family)) {
      EXPECT_EQ(ran.count(config.family), 1u) << to_string(config.family);
    }
  }
  W4A16_EXPECT_CUDA(cudaStreamDestroy(stream));
}

constexpr Format kFp16{ElementType::kFloat16, QuantOp::kScaleOnly};
constexpr Format kBf16Zeros{ElementType::kBFloat16, QuantOp::kScaleAndZeros};
constexpr Format kBf16FloatZeros{ElementType::kBFloat16, QuantOp::kScaleAndFloatZeros};

INSTANTIATE_TEST_SUITE_P(
    Shapes, HugeShapes,
    ::testing::Values(HugeShape{70000, 4096, 32768, 128, kFp16, "m*k = 2.3e9"},
                      HugeShape{70000, 4096, 32768, 128, kBf16FloatZeros, "m*k = 2.3e9"},
                      HugeShape{70000, 4096, 32768, 128, kFp16, "m*k = 2.3e9, act-order", true},
                      HugeShape{65536, 36864, 256, 128, kFp16, "m*n = 2.4e9"},
                      HugeShape{65536, 36864, 256, 64, kBf16Zeros, "m*n = 2.4e9"},
                      HugeShape{2, 65536, 36864, 128, kFp16, "n*k = 2.4e9"},
                      HugeShape{3, 65536, 36864, 36864, kBf16Zeros, "n*k = 2.4e9, per-channel"}),
    name_of);

}  // namespace
}  // namespace w4a16
