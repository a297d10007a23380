// Checkpoints packed by the formats' own code (AutoGPTQ, GPTQModel, AutoAWQ, compressed-tensors;
// tests/fixtures/checkpoints/make_fixtures.py wrote them), decoded by ours and compared bit-exact
// with the weights those libraries' own dequantization reports.
//
// The fixture folder holds, per fixture NAME, NAME/model.safetensors with its config files and
// NAME.expected.safetensors: for every layer prefix P, a tensor P + "weight", F32 [n, k] in the
// checkpoint's own column order, the library's dequantized weight. Its metadata states what the
// library was asked for (format, group_size, symmetric, act_order, gptq_v2, element) and the type
// the library dequantized in ("arithmetic": every one of them computes s * (q - z) in the type of
// the scales, one rounding of the exact product).
//
// How ours is compared: our decoded layer gives, for our column c, w = s * (q - z) exactly (a
// 16-bit scale times a small integer, exact in double and in float); rounded once to the
// library's arithmetic type and widened to float, it must have the same bits as the library's
// weight at checkpoint column k_permutation[c] (c itself without act-order). No tolerance.
//
// W4A16_CHECKPOINT_FIXTURES (environment) overrides the folder compiled in.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "w4a16/checkpoint.h"

#ifndef W4A16_CHECKPOINT_FIXTURES
#error "W4A16_CHECKPOINT_FIXTURES (the fixture folder) must be defined by the build"
#endif

namespace w4a16 {
namespace {

namespace fs = std::filesystem;

fs::path fixture_folder() {
  const char* override_path = std::getenv("W4A16_CHECKPOINT_FIXTURES");
  return override_path != nullptr && *override_path != '\0' ? fs::path(override_path)
                                                               : fs::path(W4A16_CHECKPOINT_FIXTURES);
}

// The fixture names: every NAME.expected.safetensors in the folder.
std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  std::error_code error;
  const std::string suffix = ".expected.safetensors";
  for (const auto& entry : fs::directory_iterator(fixture_folder(), error)) {
    const std::string file = entry.path().filename().string();
    if (file.size() > suffix.size() && file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0) {
      names.push_back(file.substr(0, file.size() - suffix.size()));
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// What the expected file's metadata says of its fixture.
struct FixtureInfo {
  std::string name;
  CheckpointFormat format = CheckpointFormat::kGptq;
  std::string producer;
  int group_size = 0;
  bool symmetric = false, act_order = false, gptq_v2 = false;
  ElementType element = ElementType::kFloat16;     // the scales' type, the one the layer runs with
  ElementType arithmetic = ElementType::kFloat16;  // the type the library dequantized in
  std::string copied_tensor;
};

Status read_info(const std::string& name, const SafetensorsFile& expected, FixtureInfo* out) {
  const auto& meta = expected.metadata();
  auto field = [&](const char* key, std::string* value) {
    const auto it = meta.find(key);
    if (it == meta.end()) return Status(StatusCode::kInvalidArgument, name + ": metadata has no '" + key + "'");
    *value = it->second;
    return Status::success();
  };
  std::string format, group, sym, act, v2, element, arithmetic;
  for (const auto& [key, value] :
       std::vector<std::pair<const char*, std::string*>>{{"format", &format}, {"producer", &out->producer},
                                                         {"group_size", &group}, {"symmetric", &sym},
                                                         {"act_order", &act}, {"gptq_v2", &v2},
                                                         {"element", &element}, {"arithmetic", &arithmetic},
                                                         {"copied_tensor", &out->copied_tensor}}) {
    if (Status s = field(key, value); !s.ok()) return s;
  }
  out->name = name;
  if (format == "gptq") {
    out->format = CheckpointFormat::kGptq;
  } else if (format == "awq") {
    out->format = CheckpointFormat::kAwq;
  } else if (format == "compressed-tensors") {
    out->format = CheckpointFormat::kCompressedTensors;
  } else {
    return Status(StatusCode::kInvalidArgument, name + ": unknown format " + format);
  }
  out->group_size = std::stoi(group);
  out->symmetric = sym == "true";
  out->act_order = act == "true";
  out->gptq_v2 = v2 == "true";
  out->element = element == "bf16" ? ElementType::kBFloat16 : ElementType::kFloat16;
  out->arithmetic = arithmetic == "bfloat16" ? ElementType::kBFloat16 : ElementType::kFloat16;
  return Status::success();
}

std::string read_text(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// The config file the importer reads: the first of the CLI's names found beside the checkpoint.
fs::path config_path(const fs::path& folder) {
  for (const char* name : {"quantize_config.json", "quant_config.json", "config.json"}) {
    if (fs::is_regular_file(folder / name)) return folder / name;
  }
  return {};
}

float f32_at(const TensorView& t, int64_t e) {
  float value;
  std::memcpy(&value, t.data + 4 * e, 4);
  return value;
}
uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}

// The expected tensors' layer prefixes (P of P + "weight").
std::vector<const TensorView*> expected_layers(const SafetensorsFile& expected) {
  std::vector<const TensorView*> layers;
  for (const TensorView& t : expected.tensors()) layers.push_back(&t);
  std::sort(layers.begin(), layers.end(), [](const TensorView* a, const TensorView* b) { return a->name < b->name; });
  return layers;
}
std::string prefix_of(const TensorView& expected_weight) {
  return expected_weight.name.substr(0, expected_weight.name.size() - std::string("weight").size());
}

class CheckpointFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    folder_ = fixture_folder() / GetParam();
    const fs::path expected_file = fixture_folder() / (GetParam() + ".expected.safetensors");
    W4A16_ASSERT_OK(SafetensorsFile::open(expected_file.string(), &expected_));
    W4A16_ASSERT_OK(read_info(GetParam(), expected_, &info_));
    W4A16_ASSERT_OK(SafetensorsFile::open((folder_ / "model.safetensors").string(), &checkpoint_));
    ASSERT_FALSE(expected_.tensors().empty());
    // The settings, as the importer gets them: from the config file the library wrote. The
    // format starts out wrong, so the config's quant_method must name it.
    const fs::path config_file = config_path(folder_);
    ASSERT_FALSE(config_file.empty()) << "no config file in " << folder_;
    CheckpointFormat format =
        info_.format == CheckpointFormat::kGptq ? CheckpointFormat::kAwq : CheckpointFormat::kGptq;
    W4A16_ASSERT_OK(read_checkpoint_config(read_text(config_file), &format, &config_));
    config_.element = info_.element;
    EXPECT_EQ(format, info_.format) << config_file;
    EXPECT_EQ(config_.group_size, info_.group_size) << config_file;
    EXPECT_EQ(config_.symmetric, info_.symmetric) << config_file;
    EXPECT_EQ(config_.act_order, info_.act_order) << config_file;
    EXPECT_EQ(config_.gptq_v2, info_.gptq_v2) << config_file;
  }

  fs::path folder_;
  SafetensorsFile expected_, checkpoint_;
  FixtureInfo info_;
  CheckpointConfig config_;
};

TEST_P(CheckpointFixture, DecodesBitExactToTheLibrarysOwnDequantization) {
  for (const TensorView* want : expected_layers(expected_)) {
    const std::string prefix = prefix_of(*want);
    SCOPED_TRACE(GetParam() + " layer " + prefix + " (packed by " + info_.producer + ")");
    ASSERT_EQ(want->dtype, TensorDtype::kF32);
    ASSERT_EQ(want->shape.size(), 2u);
    const int64_t n = want->shape[0], k = want->shape[1];
    CheckpointTensors found;
    W4A16_ASSERT_OK(find_checkpoint_tensors(checkpoint_, info_.format, prefix, &found));
    DecodedLayer decoded;
    W4A16_ASSERT_OK(decode_checkpoint_layer(info_.format, found, config_, &decoded));
    const QuantizedWeights& q = decoded.weights;
    ASSERT_EQ(q.n, n);
    ASSERT_EQ(q.k, k);
    EXPECT_EQ(q.group_size, info_.group_size == -1 ? k : info_.group_size);
    EXPECT_EQ(q.element, info_.element);
    // Symmetric layers run scale-only; with zero points, every format keeps them.
    EXPECT_EQ(q.quant(), info_.symmetric ? QuantOp::kScaleOnly : QuantOp::kScaleAndZeros);
    // Every act-order fixture has at least two groups and a g_idx that reorders them.
    const bool reordered = info_.act_order && q.group_size < k;
    ASSERT_EQ(!decoded.k_permutation.empty(), reordered);
    std::vector<int32_t> perm = decoded.k_permutation;
    if (perm.empty()) {
      perm.resize(size_t(k));
      std::iota(perm.begin(), perm.end(), 0);
    }
    int64_t mismatches = 0;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const double exact = q.dequantized(int(r), int(c));
        ASSERT_EQ(double(float(exact)), exact) << "s * (q - z) not exact in float at [" << r << "][" << c << "]";
        const float ours = element_to_float(info_.arithmetic, float_to_element(info_.arithmetic, float(exact)));
        const int64_t column = perm[size_t(c)];
        const float theirs = f32_at(*want, r * k + column);
        if (bits_of(ours) != bits_of(theirs)) {
          if (++mismatches <= 8) {
            ADD_FAILURE() << "w[" << r << "][" << column << "] (our column " << c << "): ours " << ours << " = "
                          << q.scale(int(r), int(c)) << " * (" << int(q.codes[size_t(r * k + c)]) << " - "
                          << q.zero(int(r), int(c)) << "), the library's " << theirs;
          }
        }
      }
    EXPECT_EQ(mismatches, 0) << "of " << n * k << " weights";
  }
}

// import_checkpoint writes our container; load_packed_layer reads every layer back with the
// decoded codes (through pack/unpack), scales, zero points and permutation, and the tensor of no
// layer is copied through.
TEST_P(CheckpointFixture, RoundTripsThroughOurContainer) {
  std::vector<uint8_t> bytes;
  ImportResult result;
  W4A16_ASSERT_OK(import_checkpoint(checkpoint_, info_.format, config_, &bytes, &result));
  const std::vector<const TensorView*> layers = expected_layers(expected_);
  EXPECT_EQ(result.layers, int(layers.size()));
  EXPECT_EQ(result.copied, 1);
  SafetensorsFile container;
  W4A16_ASSERT_OK(SafetensorsFile::parse(bytes.data(), bytes.size(), &container));
  EXPECT_EQ(container.metadata().at("w4a16.source_format"), to_string(info_.format));
  EXPECT_EQ(container.metadata().at("w4a16.element"), to_string(info_.element));
  EXPECT_EQ(container.metadata().at("format"), "pt");  // the checkpoint's own metadata, kept
  const TensorView* copied = container.find(info_.copied_tensor);
  const TensorView* original = checkpoint_.find(info_.copied_tensor);
  ASSERT_NE(copied, nullptr);
  ASSERT_NE(original, nullptr);
  EXPECT_EQ(copied->dtype, original->dtype);
  EXPECT_EQ(copied->shape, original->shape);
  ASSERT_EQ(copied->bytes, original->bytes);
  EXPECT_EQ(std::memcmp(copied->data, original->data, copied->bytes), 0);

  for (const TensorView* want : layers) {
    const std::string prefix = prefix_of(*want);
    SCOPED_TRACE(GetParam() + " layer " + prefix);
    CheckpointTensors found;
    W4A16_ASSERT_OK(find_checkpoint_tensors(checkpoint_, info_.format, prefix, &found));
    DecodedLayer decoded;
    W4A16_ASSERT_OK(decode_checkpoint_layer(info_.format, found, config_, &decoded));
    const QuantizedWeights& q = decoded.weights;
    PackedLayer packed;
    W4A16_ASSERT_OK(load_packed_layer(container, prefix, &packed));
    EXPECT_EQ(packed.n, q.n);
    EXPECT_EQ(packed.k, q.k);
    EXPECT_EQ(packed.group_size, q.group_size);
    EXPECT_EQ(packed.format, q.format());
    std::vector<uint8_t> codes;
    W4A16_ASSERT_OK(unpack_weights(packed.packed->data, packed.n, packed.k, &codes));
    EXPECT_EQ(codes, q.codes);
    ASSERT_EQ(packed.scales->bytes, q.scales.size() * 2);
    EXPECT_EQ(std::memcmp(packed.scales->data, q.scales.data(), packed.scales->bytes), 0);
    ASSERT_EQ(packed.zeros != nullptr, !q.zeros.empty());
    if (packed.zeros != nullptr) {
      ASSERT_EQ(packed.zeros->bytes, q.zeros.size() * 2);
      EXPECT_EQ(std::memcmp(packed.zeros->data, q.zeros.data(), packed.zeros->bytes), 0);
    }
    ASSERT_EQ(packed.k_permutation != nullptr, !decoded.k_permutation.empty());
    if (packed.k_permutation != nullptr) {
      ASSERT_EQ(packed.k_permutation->bytes, decoded.k_permutation.size() * 4);
      EXPECT_EQ(std::memcmp(packed.k_permutation->data, decoded.k_permutation.data(), packed.k_permutation->bytes), 0);
    }
    // None of the checkpoint's own tensors of a converted layer is copied.
    for (const TensorView* t : {found.weight, found.scales, found.zeros, found.g_idx}) {
      if (t != nullptr) {
        EXPECT_EQ(container.find(t->name), nullptr) << t->name;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CheckpointFixture, ::testing::ValuesIn(fixture_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CheckpointFixture);  // a missing folder fails below instead

// The fixtures cover what issue 15 asks: every format x {symmetric, zero points} x {act-order,
// none} where the format has it (AWQ: zero points, no act-order), GPTQ v1 and v2 both with zero
// points, bf16 scales and per-channel layers.
TEST(CheckpointFixtures, CoverEveryFormatAndOption) {
  const std::vector<std::string> names = fixture_names();
  ASSERT_FALSE(names.empty()) << "no *.expected.safetensors in " << fixture_folder()
                              << " (W4A16_CHECKPOINT_FIXTURES)";
  std::set<std::string> have;
  for (const std::string& name : names) {
    SafetensorsFile expected;
    W4A16_ASSERT_OK(SafetensorsFile::open((fixture_folder() / (name + ".expected.safetensors")).string(), &expected));
    FixtureInfo info;
    W4A16_ASSERT_OK(read_info(name, expected, &info));
    const std::string format = to_string(info.format);
    have.insert(format + (info.symmetric ? " sym" : " zeros") + (info.act_order ? " act-order" : ""));
    if (info.format == CheckpointFormat::kGptq && !info.symmetric) {
      have.insert(info.gptq_v2 ? "gptq v2 zeros" : "gptq v1 zeros");
    }
    if (info.element == ElementType::kBFloat16) have.insert(format + " bf16");
    if (info.group_size == -1) have.insert(format + " per-channel");
    have.insert("producer " + info.producer);
  }
  for (const char* want :
       {"gptq sym", "gptq zeros", "gptq sym act-order", "gptq zeros act-order", "gptq v1 zeros", "gptq v2 zeros",
        "awq zeros", "compressed-tensors sym", "compressed-tensors zeros", "compressed-tensors sym act-order",
        "compressed-tensors zeros act-order", "gptq bf16", "compressed-tensors bf16", "gptq per-channel",
        "compressed-tensors per-channel", "producer auto-gptq", "producer gptqmodel", "producer autoawq",
        "producer compressed-tensors"}) {
    EXPECT_EQ(have.count(want), 1u) << "no fixture for " << want;
  }
}

}  // namespace
}  // namespace w4a16
