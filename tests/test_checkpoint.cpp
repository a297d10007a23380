// Checkpoint decoding: layers packed the way GPTQ (v1 and v2), AWQ (GEMM) and compressed-tensors
// (pack-quantized, packed and pre-0.9.4 unpacked zero points) pack them, with and without zero
// points and act-order, go through a safetensors file and come back bit-exact in our meaning
// w = s * (q - z), act-order permutation included.
//
// The packers here are transcriptions of the formats' own packing loops (cited beside each), so
// that every shape and malformed case can be generated; test_checkpoint_fixtures.cpp checks the
// decoders against files the libraries themselves wrote (tests/fixtures/checkpoints).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "w4a16/checkpoint.h"

namespace w4a16 {
namespace {

using test::Random;

// A layer in the checkpoint's own column order: w[r][c] = s[g(c)][r] * (q[r][c] - z[g(c)][r]).
struct Layer {
  int n = 0, k = 0, group = 0;
  std::vector<uint8_t> q;        // [n][k]
  std::vector<uint16_t> scales;  // [k/g][n] fp16 bits
  std::vector<int> zeros;        // [k/g][n], in [lo, hi]
  std::vector<int32_t> g_idx;    // [k]
  double w(int r, int c) const {
    const int g = g_idx[size_t(c)];
    return double(element_to_float(ElementType::kFloat16, scales[size_t(g) * n + r])) *
           (double(q[size_t(r) * k + c]) - double(zeros[size_t(g) * n + r]));
  }
};

Layer random_layer(Random& rng, int n, int k, int group, bool act_order, int zero_lo, int zero_hi) {
  Layer l;
  l.n = n;
  l.k = k;
  l.group = group;
  const int groups = k / group;
  l.q.resize(size_t(n) * k);
  for (auto& v : l.q) v = uint8_t(rng.uniform_int(0, 15));
  l.scales = rng.elements(ElementType::kFloat16, size_t(groups) * n, 0.001f, 0.05f);
  l.zeros.resize(size_t(groups) * n);
  for (auto& z : l.zeros) z = rng.uniform_int(zero_lo, zero_hi);
  l.g_idx.resize(size_t(k));
  std::vector<int> position(static_cast<size_t>(k));
  std::iota(position.begin(), position.end(), 0);
  if (act_order) std::shuffle(position.begin(), position.end(), rng.engine());
  // GPTQ's act-order: g_idx[c] = (rank of column c in the processing order) / group_size.
  for (int c = 0; c < k; ++c) l.g_idx[size_t(c)] = position[size_t(c)] / group;
  return l;
}

std::vector<uint8_t> random_bytes(Random& rng, size_t count) {
  std::vector<uint8_t> out(count);
  for (auto& b : out) b = uint8_t(rng.uniform_int(0, 255));
  return out;
}

std::vector<uint8_t> bytes_of(const std::vector<uint32_t>& words) {
  std::vector<uint8_t> out(words.size() * 4);
  std::memcpy(out.data(), words.data(), out.size());
  return out;
}
std::vector<uint8_t> bytes_of(const std::vector<uint16_t>& halves) {
  std::vector<uint8_t> out(halves.size() * 2);
  std::memcpy(out.data(), halves.data(), out.size());
  return out;
}
std::vector<uint8_t> bytes_of(const std::vector<int32_t>& values) {
  std::vector<uint8_t> out(values.size() * 4);
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// GPTQ (AutoGPTQ qlinear_cuda_old.py pack(): qweight[row] |= intweight[j] << (bits * (j - i)) over
// k; zeros -= 1 (v1), qzeros[:, col] |= zeros[:, j] << (bits * (j - i)) over n).
std::vector<TensorData> pack_gptq(const Layer& l, bool v2, const std::string& prefix) {
  const int n = l.n, k = l.k, groups = k / l.group;
  std::vector<uint32_t> qweight(size_t(k / 8) * n, 0), qzeros(size_t(groups) * (n / 8), 0);
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < n; ++j) qweight[size_t(i / 8) * n + j] |= uint32_t(l.q[size_t(j) * k + i]) << (4 * (i % 8));
  for (int g = 0; g < groups; ++g)
    for (int j = 0; j < n; ++j) {
      const int stored = l.zeros[size_t(g) * n + j] - (v2 ? 0 : 1);
      qzeros[size_t(g) * (n / 8) + j / 8] |= uint32_t(stored) << (4 * (j % 8));
    }
  return {{prefix + "qweight", TensorDtype::kI32, {k / 8, n}, bytes_of(qweight)},
          {prefix + "qzeros", TensorDtype::kI32, {groups, n / 8}, bytes_of(qzeros)},
          {prefix + "scales", TensorDtype::kF16, {groups, n}, bytes_of(l.scales)},
          {prefix + "g_idx", TensorDtype::kI32, {k}, bytes_of(l.g_idx)}};
}

// AWQ GEMM (AutoAWQ awq/modules/linear/gemm.py from_linear(): order_map = [0, 2, 4, 6, 1, 3, 5, 7];
// qweight[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4), the same for qzeros).
std::vector<TensorData> pack_awq(const Layer& l, const std::string& prefix) {
  const int n = l.n, k = l.k, groups = k / l.group;
  constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  std::vector<uint32_t> qweight(size_t(k) * (n / 8), 0), qzeros(size_t(groups) * (n / 8), 0);
  for (int i = 0; i < k; ++i)
    for (int col = 0; col < n / 8; ++col)
      for (int s = 0; s < 8; ++s)
        qweight[size_t(i) * (n / 8) + col] |= uint32_t(l.q[size_t(col * 8 + kOrder[s]) * k + i]) << (4 * s);
  for (int g = 0; g < groups; ++g)
    for (int col = 0; col < n / 8; ++col)
      for (int s = 0; s < 8; ++s)
        qzeros[size_t(g) * (n / 8) + col] |= uint32_t(l.zeros[size_t(g) * n + col * 8 + kOrder[s]]) << (4 * s);
  return {{prefix + "qweight", TensorDtype::kI32, {k, n / 8}, bytes_of(qweight)},
          {prefix + "qzeros", TensorDtype::kI32, {groups, n / 8}, bytes_of(qzeros)},
          {prefix + "scales", TensorDtype::kF16, {groups, n}, bytes_of(l.scales)}};
}

// compressed-tensors pack-quantized (pack_quantized.py pack_to_int32(): value + (1 << (bits - 1)),
// shifted by bits * i along the packed dim; zero points packed along n since 0.9.4, int8 before).
std::vector<TensorData> pack_compressed_tensors(const Layer& l, bool zeros, bool packed_zeros, bool g_idx,
                                                const std::string& prefix) {
  const int n = l.n, k = l.k, groups = k / l.group;
  std::vector<uint32_t> packed(size_t(n) * (k / 8), 0);
  for (int r = 0; r < n; ++r)
    for (int c = 0; c < k; ++c) {
      const int v = int(l.q[size_t(r) * k + c]) - 8;  // the signed value the quantizer made
      packed[size_t(r) * (k / 8) + c / 8] |= uint32_t(v + 8) << (4 * (c % 8));
    }
  // weight_scale is [n, G]: transposed from our [G][n].
  std::vector<uint16_t> scale(size_t(n) * groups);
  for (int r = 0; r < n; ++r)
    for (int g = 0; g < groups; ++g) scale[size_t(r) * groups + g] = l.scales[size_t(g) * n + r];
  const std::vector<int64_t> shape_values = {n, k};
  std::vector<uint8_t> shape_bytes(16);
  std::memcpy(shape_bytes.data(), shape_values.data(), 16);
  std::vector<TensorData> out = {{prefix + "weight_packed", TensorDtype::kI32, {n, k / 8}, bytes_of(packed)},
                                 {prefix + "weight_scale", TensorDtype::kF16, {n, groups}, bytes_of(scale)},
                                 {prefix + "weight_shape", TensorDtype::kI64, {2}, shape_bytes}};
  if (zeros) {
    if (packed_zeros) {
      std::vector<uint32_t> zp(size_t((n + 7) / 8) * groups, 0);
      for (int r = 0; r < n; ++r)
        for (int g = 0; g < groups; ++g) {
          const int signed_zp = l.zeros[size_t(g) * n + r] - 8;
          zp[size_t(r / 8) * groups + g] |= uint32_t(signed_zp + 8) << (4 * (r % 8));
        }
      out.push_back({prefix + "weight_zero_point", TensorDtype::kI32, {(n + 7) / 8, groups}, bytes_of(zp)});
    } else {
      std::vector<uint8_t> zp(size_t(n) * groups);
      for (int r = 0; r < n; ++r)
        for (int g = 0; g < groups; ++g) zp[size_t(r) * groups + g] = uint8_t(int8_t(l.zeros[size_t(g) * n + r] - 8));
      out.push_back({prefix + "weight_zero_point", TensorDtype::kI8, {n, groups}, zp});
    }
  }
  if (g_idx) out.push_back({prefix + "weight_g_idx", TensorDtype::kI32, {k}, bytes_of(l.g_idx)});
  return out;
}

// Writes the tensors to a safetensors buffer, reads the layer back and checks every weight.
void expect_decodes(const Layer& l, CheckpointFormat format, const std::vector<TensorData>& tensors,
                    const CheckpointConfig& config, bool expect_zeros) {
  const std::string prefix = "model.layers.3.mlp.down_proj.";
  std::vector<uint8_t> file_bytes;
  W4A16_ASSERT_OK(write_safetensors(tensors, {{"format", "pt"}}, &file_bytes));
  SafetensorsFile file;
  W4A16_ASSERT_OK(SafetensorsFile::parse(file_bytes.data(), file_bytes.size(), &file));
  CheckpointTensors found;
  W4A16_ASSERT_OK(find_checkpoint_tensors(file, format, prefix, &found));
  DecodedLayer decoded;
  W4A16_ASSERT_OK(decode_checkpoint_layer(format, found, config, &decoded));
  const QuantizedWeights& q = decoded.weights;
  ASSERT_EQ(q.n, l.n);
  ASSERT_EQ(q.k, l.k);
  ASSERT_EQ(q.group_size, l.group);
  EXPECT_EQ(q.quant(), expect_zeros ? QuantOp::kScaleAndZeros : QuantOp::kScaleOnly);
  const bool act_order = !std::is_sorted(l.g_idx.begin(), l.g_idx.end());
  ASSERT_EQ(decoded.k_permutation.empty(), !act_order);
  std::vector<int32_t> perm = decoded.k_permutation;
  if (perm.empty()) {
    perm.resize(size_t(l.k));
    std::iota(perm.begin(), perm.end(), 0);
  }
  std::vector<int32_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  for (int c = 0; c < l.k; ++c) ASSERT_EQ(sorted[size_t(c)], c) << "not a permutation";
  int mismatches = 0;
  for (int r = 0; r < l.n && mismatches < 5; ++r)
    for (int c = 0; c < l.k && mismatches < 5; ++c) {
      const double want = l.w(r, perm[size_t(c)]);
      if (q.dequantized(r, c) != want) {
        ADD_FAILURE() << "w[" << r << "][" << c << "] (checkpoint column " << perm[size_t(c)] << ") = "
                      << q.dequantized(r, c) << ", expected " << want;
        ++mismatches;
      }
    }
  // Decoded weights pack (the kernels' layout) without complaint.
  std::vector<uint8_t> packed;
  if (l.n % 16 == 0 && l.k % 64 == 0) {
    W4A16_EXPECT_OK(pack_weights(q, &packed));
  }
}

struct DecodeCase {
  int n, k, group;
};
const DecodeCase kShapes[] = {{48, 256, 64}, {80, 384, 128}, {16, 192, 192}, {32, 512, 32}};

TEST(Checkpoint, GptqV1AndV2DecodeBitExact) {
  W4A16_RANDOM(rng);
  for (const DecodeCase& s : kShapes)
    for (bool v2 : {false, true})
      for (bool act_order : {false, true})
        for (bool sym : {false, true}) {
          SCOPED_TRACE("n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " g " + std::to_string(s.group) +
                       (v2 ? " v2" : " v1") + (act_order ? " act-order" : "") + (sym ? " sym" : " asym"));
          // v1 stores z - 1: these transcribed packers store it per nibble, where a zero point of
          // 0 cannot be stored (AutoGPTQ's packer corrupts the word; GPTQModel's borrows across
          // nibbles, covered by the fixtures), so v1 layers here get zero points in [1, 15].
          const Layer l = random_layer(rng, s.n, s.k, s.group, act_order, sym ? 8 : (v2 ? 0 : 1), sym ? 8 : 15);
          CheckpointConfig config;
          config.group_size = s.group == s.k ? -1 : s.group;
          config.symmetric = sym;
          config.act_order = act_order;
          config.gptq_v2 = v2;
          ASSERT_NO_FATAL_FAILURE(
              expect_decodes(l, CheckpointFormat::kGptq, pack_gptq(l, v2, "model.layers.3.mlp.down_proj."), config, !sym));
        }
}

TEST(Checkpoint, AwqDecodesBitExact) {
  W4A16_RANDOM(rng);
  for (const DecodeCase& s : kShapes) {
    SCOPED_TRACE("n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " g " + std::to_string(s.group));
    const Layer l = random_layer(rng, s.n, s.k, s.group, false, 0, 15);
    CheckpointConfig config;
    config.group_size = s.group;
    ASSERT_NO_FATAL_FAILURE(
        expect_decodes(l, CheckpointFormat::kAwq, pack_awq(l, "model.layers.3.mlp.down_proj."), config, true));
  }
}

TEST(Checkpoint, CompressedTensorsDecodesBitExact) {
  W4A16_RANDOM(rng);
  for (const DecodeCase& s : kShapes)
    for (int zeros : {0, 1, 2})  // none (symmetric), packed (>= 0.9.4), int8 (before)
      for (bool act_order : {false, true}) {
        SCOPED_TRACE("n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " g " + std::to_string(s.group) +
                     " zeros " + std::to_string(zeros) + (act_order ? " act-order" : ""));
        const Layer l = random_layer(rng, s.n, s.k, s.group, act_order, zeros == 0 ? 8 : 0, zeros == 0 ? 8 : 15);
        CheckpointConfig config;
        config.group_size = s.group;
        config.symmetric = zeros == 0;
        config.act_order = act_order;
        ASSERT_NO_FATAL_FAILURE(expect_decodes(
            l, CheckpointFormat::kCompressedTensors,
            pack_compressed_tensors(l, zeros != 0, zeros == 1, act_order, "model.layers.3.mlp.down_proj."), config,
            zeros != 0));
      }
}

TEST(Checkpoint, Bf16ScalesForABf16Model) {
  W4A16_RANDOM(rng);
  const Layer l = random_layer(rng, 32, 256, 64, false, 0, 15);
  std::vector<TensorData> tensors = pack_awq(l, "p.");
  std::vector<uint8_t> bytes;
  W4A16_ASSERT_OK(write_safetensors(tensors, {}, &bytes));
  SafetensorsFile file;
  W4A16_ASSERT_OK(SafetensorsFile::parse(bytes.data(), bytes.size(), &file));
  CheckpointTensors found;
  W4A16_ASSERT_OK(find_checkpoint_tensors(file, CheckpointFormat::kAwq, "p.", &found));
  CheckpointConfig config;
  config.group_size = 64;
  config.element = ElementType::kBFloat16;
  DecodedLayer decoded;
  W4A16_ASSERT_OK(decode_checkpoint_layer(CheckpointFormat::kAwq, found, config, &decoded));
  EXPECT_EQ(decoded.weights.element, ElementType::kBFloat16);
  // Every scale is the fp16 one rounded to bf16; zero points (integers) are exact.
  for (size_t i = 0; i < l.scales.size(); ++i) {
    const float fp16 = element_to_float(ElementType::kFloat16, l.scales[i]);
    ASSERT_EQ(decoded.weights.scales[i], float_to_element(ElementType::kBFloat16, fp16)) << i;
    ASSERT_EQ(element_to_float(ElementType::kBFloat16, decoded.weights.zeros[i]), float(l.zeros[i])) << i;
  }
}

TEST(Checkpoint, InconsistentLayersAreRejected) {
  W4A16_RANDOM(rng);
  const Layer l = random_layer(rng, 32, 256, 64, true, 1, 15);
  const std::string prefix = "x.";
  auto decode = [&](std::vector<TensorData> tensors, CheckpointFormat format, CheckpointConfig config) {
    std::vector<uint8_t> bytes;
    EXPECT_TRUE(write_safetensors(tensors, {}, &bytes).ok());
    SafetensorsFile file;
    EXPECT_TRUE(SafetensorsFile::parse(bytes.data(), bytes.size(), &file).ok());
    CheckpointTensors found;
    if (Status s = find_checkpoint_tensors(file, format, prefix, &found); !s.ok()) return s;
    DecodedLayer decoded;
    return decode_checkpoint_layer(format, found, config, &decoded);
  };
  CheckpointConfig config;
  config.group_size = 64;
  config.act_order = true;
  const std::vector<TensorData> good = pack_gptq(l, false, prefix);
  W4A16_EXPECT_OK(decode(good, CheckpointFormat::kGptq, config));
  {
    SCOPED_TRACE("wrong layer name");
    W4A16_EXPECT_CODE(decode(pack_gptq(l, false, "y."), CheckpointFormat::kGptq, config), StatusCode::kInvalidArgument);
  }
  {
    SCOPED_TRACE("qzeros of the wrong shape");
    std::vector<TensorData> t = good;
    t[1].shape = {int64_t(t[1].bytes.size() / 4), 1};
    W4A16_EXPECT_CODE(decode(t, CheckpointFormat::kGptq, config), StatusCode::kInvalidArgument);
  }
  {
    SCOPED_TRACE("scales as int32");
    std::vector<TensorData> t = good;
    t[2].dtype = TensorDtype::kI16;
    W4A16_EXPECT_CODE(decode(t, CheckpointFormat::kGptq, config), StatusCode::kInvalidArgument);
  }
  {
    SCOPED_TRACE("group size that does not divide k");
    CheckpointConfig bad = config;
    bad.group_size = 96;
    W4A16_EXPECT_CODE(decode(good, CheckpointFormat::kGptq, bad), StatusCode::kInvalidArgument);
  }
  {
    SCOPED_TRACE("g_idx out of range");
    std::vector<TensorData> t = good;
    const int32_t bad = 99;
    std::memcpy(t[3].bytes.data() + 4 * 5, &bad, 4);
    W4A16_EXPECT_CODE(decode(t, CheckpointFormat::kGptq, config), StatusCode::kInvalidArgument);
  }
  {
    SCOPED_TRACE("act-order groups of unequal size");
    std::vector<TensorData> t = good;
    int32_t first;
    std::memcpy(&first, t[3].bytes.data(), 4);
    const int32_t other = (first + 1) % 4;
    std::memcpy(t[3].bytes.data(), &other, 4);  // one column moves to another group
    W4A16_EXPECT_CODE(decode(t, CheckpointFormat::kGptq, config), StatusCode::kInvalidArgument);
  }
  {
    SCOPED_TRACE("compressed-tensors int8 zero point out of range");
    std::vector<TensorData> t = pack_compressed_tensors(l, true, false, false, prefix);
    t.back().bytes[7] = uint8_t(int8_t(9));
    CheckpointConfig ct;
    ct.group_size = 64;
    W4A16_EXPECT_CODE(decode(t, CheckpointFormat::kCompressedTensors, ct), StatusCode::kInvalidArgument);
  }
}

// Two GPTQ act-order layers and two plain tensors become a container whose layers load back with
// the decoded codes (packed), scales, zero points and permutation, and whose other tensors and
// metadata are copied through.
TEST(Checkpoint, ImportWritesAContainerThatLoadsBack) {
  W4A16_RANDOM(rng);
  const Layer up = random_layer(rng, 48, 256, 64, true, 1, 15), down = random_layer(rng, 32, 192, 64, false, 1, 15);
  std::vector<TensorData> tensors = pack_gptq(up, false, "model.layers.0.mlp.up_proj.");
  for (TensorData& t : pack_gptq(down, false, "model.layers.0.mlp.down_proj.")) tensors.push_back(std::move(t));
  tensors.push_back({"model.embed_tokens.weight", TensorDtype::kF16, {4, 8}, random_bytes(rng, 64)});
  tensors.push_back({"model.norm.weight", TensorDtype::kBF16, {8}, random_bytes(rng, 16)});
  std::vector<uint8_t> bytes;
  W4A16_ASSERT_OK(write_safetensors(tensors, {{"format", "pt"}}, &bytes));
  SafetensorsFile checkpoint;
  W4A16_ASSERT_OK(SafetensorsFile::parse(bytes.data(), bytes.size(), &checkpoint));
  CheckpointConfig config;
  config.group_size = 64;
  config.act_order = true;
  std::vector<uint8_t> container_bytes;
  ImportResult result;
  static int progress_calls = 0;
  progress_calls = 0;
  W4A16_ASSERT_OK(import_checkpoint(checkpoint, CheckpointFormat::kGptq, config, &container_bytes, &result,
                                    [](int, int) { ++progress_calls; }));
  EXPECT_EQ(result.layers, 2);
  EXPECT_EQ(result.copied, 2);
  EXPECT_EQ(progress_calls, 2);
  SafetensorsFile container;
  W4A16_ASSERT_OK(SafetensorsFile::parse(container_bytes.data(), container_bytes.size(), &container));
  EXPECT_EQ(container.metadata().at("format"), "pt");
  EXPECT_EQ(container.metadata().at("w4a16.source_format"), "gptq");
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight"}) {
    const TensorView* copied = container.find(name);
    const TensorView* original = checkpoint.find(name);
    ASSERT_NE(copied, nullptr) << name;
    ASSERT_EQ(copied->bytes, original->bytes);
    EXPECT_EQ(std::memcmp(copied->data, original->data, copied->bytes), 0) << name;
  }
  EXPECT_EQ(container.find("model.layers.0.mlp.up_proj.qweight"), nullptr) << "a converted tensor was copied too";

  for (const auto& [prefix, layer, act_order] :
       {std::tuple<std::string, const Layer*, bool>{"model.layers.0.mlp.up_proj.", &up, true},
        std::tuple<std::string, const Layer*, bool>{"model.layers.0.mlp.down_proj.", &down, false}}) {
    SCOPED_TRACE(prefix);
    PackedLayer packed;
    W4A16_ASSERT_OK(load_packed_layer(container, prefix, &packed));
    EXPECT_EQ(packed.n, layer->n);
    EXPECT_EQ(packed.k, layer->k);
    EXPECT_EQ(packed.group_size, 64);
    EXPECT_EQ(packed.format.quant, QuantOp::kScaleAndZeros);
    EXPECT_EQ(packed.k_permutation != nullptr, act_order);
    // The same as decoding the layer directly.
    CheckpointTensors found;
    W4A16_ASSERT_OK(find_checkpoint_tensors(checkpoint, CheckpointFormat::kGptq, prefix, &found));
    DecodedLayer decoded;
    W4A16_ASSERT_OK(decode_checkpoint_layer(CheckpointFormat::kGptq, found, config, &decoded));
    std::vector<uint8_t> codes;
    W4A16_ASSERT_OK(unpack_weights(packed.packed->data, packed.n, packed.k, &codes));
    EXPECT_EQ(codes, decoded.weights.codes);
    ASSERT_EQ(packed.scales->bytes, decoded.weights.scales.size() * 2);
    EXPECT_EQ(std::memcmp(packed.scales->data, decoded.weights.scales.data(), packed.scales->bytes), 0);
    ASSERT_EQ(packed.zeros->bytes, decoded.weights.zeros.size() * 2);
    EXPECT_EQ(std::memcmp(packed.zeros->data, decoded.weights.zeros.data(), packed.zeros->bytes), 0);
    if (act_order) {
      ASSERT_EQ(packed.k_permutation->bytes, decoded.k_permutation.size() * 4);
      EXPECT_EQ(std::memcmp(packed.k_permutation->data, decoded.k_permutation.data(), packed.k_permutation->bytes), 0);
    }
  }
  PackedLayer none;
  W4A16_EXPECT_CODE(load_packed_layer(container, "model.layers.1.", &none), StatusCode::kInvalidArgument);
  {
    SCOPED_TRACE("a k_permutation that is not a permutation");
    std::vector<uint8_t> corrupt = container_bytes;
    const TensorView* perm = container.find("model.layers.0.mlp.up_proj.w4a16.k_permutation");
    ASSERT_NE(perm, nullptr);
    const size_t offset = size_t(perm->data - container_bytes.data());
    std::memcpy(corrupt.data() + offset + 4, corrupt.data() + offset, 4);  // entry 1 repeats entry 0
    SafetensorsFile bad;
    W4A16_ASSERT_OK(SafetensorsFile::parse(corrupt.data(), corrupt.size(), &bad));
    W4A16_EXPECT_CODE(load_packed_layer(bad, "model.layers.0.mlp.up_proj.", &none), StatusCode::kInvalidArgument);
  }
  {
    SCOPED_TRACE("a fractional zero point: the float-zeros op");
    std::vector<uint8_t> edited = container_bytes;
    const TensorView* zeros = container.find("model.layers.0.mlp.down_proj.w4a16.zeros");
    ASSERT_NE(zeros, nullptr);
    const size_t offset = size_t(zeros->data - container_bytes.data());
    const ElementType element = zeros->dtype == TensorDtype::kBF16 ? ElementType::kBFloat16 : ElementType::kFloat16;
    const uint16_t half = float_to_element(element, 7.5f);
    std::memcpy(edited.data() + offset + 2 * 3, &half, 2);  // the 4th zero point: 7.5
    SafetensorsFile fractional;
    W4A16_ASSERT_OK(SafetensorsFile::parse(edited.data(), edited.size(), &fractional));
    PackedLayer layer;
    W4A16_ASSERT_OK(load_packed_layer(fractional, "model.layers.0.mlp.down_proj.", &layer));
    EXPECT_EQ(layer.format.quant, QuantOp::kScaleAndFloatZeros);
    W4A16_ASSERT_OK(load_packed_layer(fractional, "model.layers.0.mlp.up_proj.", &layer));
    EXPECT_EQ(layer.format.quant, QuantOp::kScaleAndZeros);  // the other layer is untouched
  }
  W4A16_EXPECT_CODE(load_packed_layer(checkpoint, "model.layers.0.mlp.up_proj.", &none), StatusCode::kInvalidArgument);
  // A file without any layer of the format is an error, not an empty container.
  std::vector<uint8_t> ignored;
  W4A16_EXPECT_CODE(import_checkpoint(checkpoint, CheckpointFormat::kCompressedTensors, config, &ignored, nullptr),
                    StatusCode::kInvalidArgument);
}

// The review's cases: a tiny file with a huge zero-extent tensor, config and g_idx disagreeing,
// a scale beyond the element type, a layer split across shards, names that only end like a layer.
TEST(Checkpoint, HostileAndSplitCheckpoints) {
  W4A16_RANDOM(rng);
  auto parse = [](const std::vector<TensorData>& tensors, std::vector<uint8_t>* bytes, SafetensorsFile* file) {
    ASSERT_TRUE(write_safetensors(tensors, {}, bytes).ok());
    ASSERT_TRUE(SafetensorsFile::parse(bytes->data(), bytes->size(), file).ok());
  };
  CheckpointConfig config;
  config.group_size = 64;
  {
    SCOPED_TRACE("zero-extent tensors claiming k = 2^43");
    std::vector<uint8_t> bytes;
    SafetensorsFile file;
    ASSERT_NO_FATAL_FAILURE(parse({{"x.qweight", TensorDtype::kI32, {int64_t(1) << 40, 0}, {}},
                                   {"x.qzeros", TensorDtype::kI32, {int64_t(1) << 36, 0}, {}},
                                   {"x.scales", TensorDtype::kF16, {int64_t(1) << 36, 0}, {}}},
                                  &bytes, &file));
    CheckpointTensors t;
    W4A16_ASSERT_OK(find_checkpoint_tensors(file, CheckpointFormat::kGptq, "x.", &t));
    DecodedLayer layer;
    W4A16_EXPECT_CODE(decode_checkpoint_layer(CheckpointFormat::kGptq, t, config, &layer), StatusCode::kInvalidArgument);
  }
  const Layer reordered = random_layer(rng, 32, 256, 64, true, 1, 15), plain = random_layer(rng, 32, 256, 64, false, 1, 15);
  auto decode = [&](const Layer& l, bool act_order, bool drop_g_idx) {
    std::vector<TensorData> tensors = pack_gptq(l, false, "x.");
    if (drop_g_idx) tensors.pop_back();
    std::vector<uint8_t> bytes;
    SafetensorsFile file;
    EXPECT_TRUE(write_safetensors(tensors, {}, &bytes).ok());
    EXPECT_TRUE(SafetensorsFile::parse(bytes.data(), bytes.size(), &file).ok());
    CheckpointTensors t;
    EXPECT_TRUE(find_checkpoint_tensors(file, CheckpointFormat::kGptq, "x.", &t).ok());
    CheckpointConfig c = config;
    c.act_order = act_order;
    DecodedLayer layer;
    return decode_checkpoint_layer(CheckpointFormat::kGptq, t, c, &layer);
  };
  W4A16_EXPECT_OK(decode(reordered, true, false));
  W4A16_EXPECT_OK(decode(plain, false, false));
  W4A16_EXPECT_OK(decode(plain, true, false));  // act-order whose g_idx happens to keep the order
  W4A16_EXPECT_CODE(decode(reordered, false, false), StatusCode::kInvalidArgument);  // g_idx reorders, config says no
  W4A16_EXPECT_CODE(decode(plain, true, true), StatusCode::kInvalidArgument);        // act-order without g_idx
  W4A16_EXPECT_OK(decode(plain, false, true));
  {
    SCOPED_TRACE("an fp32 scale beyond fp16");
    std::vector<TensorData> tensors = pack_gptq(plain, false, "x.");
    std::vector<float> scales(size_t(256 / 64) * 32, 1e5f);
    tensors[2] = {"x.scales", TensorDtype::kF32, {4, 32}, std::vector<uint8_t>(scales.size() * 4)};
    std::memcpy(tensors[2].bytes.data(), scales.data(), tensors[2].bytes.size());
    std::vector<uint8_t> bytes;
    SafetensorsFile file;
    ASSERT_NO_FATAL_FAILURE(parse(tensors, &bytes, &file));
    CheckpointTensors t;
    W4A16_ASSERT_OK(find_checkpoint_tensors(file, CheckpointFormat::kGptq, "x.", &t));
    DecodedLayer layer;
    W4A16_EXPECT_CODE(decode_checkpoint_layer(CheckpointFormat::kGptq, t, config, &layer), StatusCode::kInvalidArgument);
    config.element = ElementType::kBFloat16;  // bf16 holds 1e5
    W4A16_EXPECT_OK(decode_checkpoint_layer(CheckpointFormat::kGptq, t, config, &layer));
    config.element = ElementType::kFloat16;
  }
  {
    SCOPED_TRACE("a layer split across two shards, and a tensor that only ends in qweight");
    std::vector<TensorData> tensors = pack_gptq(reordered, false, "model.layers.0.mlp.up_proj.");
    std::vector<TensorData> second = {tensors[2], tensors[3]};  // scales and g_idx in the next shard
    tensors.resize(2);
    tensors.push_back({"model.extra_qweight", TensorDtype::kU8, {4}, {1, 2, 3, 4}});
    std::vector<uint8_t> bytes1, bytes2;
    SafetensorsFile shard1, shard2;
    ASSERT_NO_FATAL_FAILURE(parse(tensors, &bytes1, &shard1));
    ASSERT_NO_FATAL_FAILURE(parse(second, &bytes2, &shard2));
    CheckpointConfig c = config;
    c.act_order = true;
    std::vector<TensorData> out;
    ImportResult result;
    W4A16_ASSERT_OK(import_checkpoint_tensors({&shard1, &shard2}, CheckpointFormat::kGptq, c, &out, &result));
    EXPECT_EQ(result.layers, 1);
    EXPECT_EQ(result.copied, 1);  // model.extra_qweight, not a layer
    bool permutation = false;
    for (const TensorData& t : out) permutation |= t.name == "model.layers.0.mlp.up_proj.w4a16.k_permutation";
    EXPECT_TRUE(permutation) << "the g_idx in the second shard was not used";
  }
  {
    SCOPED_TRACE("the writer refuses what the reader would");
    std::vector<uint8_t> bytes;
    W4A16_EXPECT_CODE(write_safetensors({{"a", TensorDtype::kU8, {int64_t(1) << 62, 4}, {}}}, {}, &bytes),
                      StatusCode::kInvalidArgument);
    W4A16_EXPECT_CODE(write_safetensors({{"bad \xff name", TensorDtype::kU8, {1}, {7}}}, {}, &bytes),
                      StatusCode::kInvalidArgument);
  }
}

TEST(Checkpoint, ConfigsOfEachFormatAreRead) {
  CheckpointFormat format = CheckpointFormat::kAwq;
  CheckpointConfig config;
  // AutoGPTQ's quantize_config.json.
  W4A16_ASSERT_OK(read_checkpoint_config(
      R"({"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": true, "static_groups": false,
          "sym": false, "true_sequential": true, "quant_method": "gptq", "checkpoint_format": "gptq"})",
      &format, &config));
  EXPECT_EQ(format, CheckpointFormat::kGptq);
  EXPECT_EQ(config.group_size, 128);
  EXPECT_TRUE(config.act_order);
  EXPECT_FALSE(config.symmetric);
  EXPECT_FALSE(config.gptq_v2);
  // GPTQModel's config.json, v2 zero points, per-channel.
  config = CheckpointConfig{};
  W4A16_ASSERT_OK(read_checkpoint_config(
      R"({"architectures": ["LlamaForCausalLM"], "quantization_config": {"bits": 4, "group_size": -1,
          "desc_act": false, "sym": true, "quant_method": "gptq", "format": "gptq_v2"}})",
      &format, &config));
  EXPECT_EQ(format, CheckpointFormat::kGptq);
  EXPECT_EQ(config.group_size, -1);
  EXPECT_TRUE(config.symmetric);
  EXPECT_TRUE(config.gptq_v2);
  // AutoAWQ: old quant_config.json keys and config.json's.
  config = CheckpointConfig{};
  format = CheckpointFormat::kAwq;
  W4A16_ASSERT_OK(read_checkpoint_config(R"({"zero_point": true, "q_group_size": 64, "w_bit": 4, "version": "GEMM"})",
                                         &format, &config));
  EXPECT_EQ(format, CheckpointFormat::kAwq);
  EXPECT_EQ(config.group_size, 64);
  W4A16_ASSERT_OK(read_checkpoint_config(
      R"({"quantization_config": {"quant_method": "awq", "zero_point": true, "group_size": 128, "bits": 4,
          "version": "gemm", "modules_to_not_convert": null}})",
      &format, &config));
  EXPECT_EQ(config.group_size, 128);
  EXPECT_FALSE(config.symmetric);
  // compressed-tensors (llm-compressor's W4A16 preset, with actorder "group").
  config = CheckpointConfig{};
  W4A16_ASSERT_OK(read_checkpoint_config(
      R"({"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
          "symmetric": true, "strategy": "group", "group_size": 128, "actorder": "group"}}},
          "ignore": ["lm_head"]}})",
      &format, &config));
  EXPECT_EQ(format, CheckpointFormat::kCompressedTensors);
  EXPECT_EQ(config.group_size, 128);
  EXPECT_TRUE(config.symmetric);
  EXPECT_TRUE(config.act_order);

  const char* bad[] = {
      R"({"bits": 8, "group_size": 128, "quant_method": "gptq"})",
      R"({"bits": 4, "group_size": "128", "quant_method": "gptq"})",
      R"({"bits": 4, "group_size": 0, "quant_method": "gptq"})",
      R"({"bits": 4, "group_size": 128, "quant_method": "gptq", "checkpoint_format": "marlin"})",
      R"({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"})",
      R"({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": false})",
      R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {}})",
      R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {"weights": {"num_bits": 8}}}})",
      R"({"bits": 4, "group_size": 128)",
      R"([1, 2])",
  };
  for (const char* text : bad) {
    SCOPED_TRACE(text);
    CheckpointFormat f = CheckpointFormat::kGptq;
    CheckpointConfig c;
    W4A16_EXPECT_CODE(read_checkpoint_config(text, &f, &c), StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace w4a16
