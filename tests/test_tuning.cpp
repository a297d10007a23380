// The profiler's saved results (runner/tuning.h): round trip, the device key, m buckets, and every
// malformed file rejected.
#include <string>

#include <gtest/gtest.h>

#include "runner/tuning.h"
#include "test_util.h"

namespace w4a16 {
namespace {

KernelConfig named(const std::string& name) {
  KernelConfig config;
  EXPECT_TRUE(parse_kernel_config(name, &config)) << name;
  return config;
}

TEST(Tuning, MBucketsArePowersOfTwo) {
  EXPECT_EQ(tuning_m_bucket(1), 1);
  EXPECT_EQ(tuning_m_bucket(2), 2);
  EXPECT_EQ(tuning_m_bucket(3), 4);
  EXPECT_EQ(tuning_m_bucket(16), 16);
  EXPECT_EQ(tuning_m_bucket(17), 32);
  EXPECT_EQ(tuning_m_bucket(1000), 1024);
  EXPECT_EQ(tuning_m_bucket(1 << 30), 1 << 30);
  EXPECT_EQ(tuning_m_bucket((1 << 30) + 1), (1 << 30) + 1);  // no overflow past 2^30
}

TEST(Tuning, RoundTripsForTheSameDeviceOnly) {
  const TuningDevice h200{"NVIDIA H200", 132, "0.1.0"};
  TuningTable table;
  table[{16, 4096, 4096, 128, {ElementType::kFloat16, QuantOp::kScaleOnly}}] = named("st_m16n32_w1x1x16_s3_k1");
  table[{32, 28672, 8192, 64, {ElementType::kBFloat16, QuantOp::kScaleAndZeros}}] = named("ws_m32n128_w1x8x1_s6_k4");
  table[{4096, 8192, 8192, 128, {ElementType::kFloat16, QuantOp::kScaleAndZeros}}] = named("dequant_cublas");
  const std::string text = tuning_to_json(h200, table);
  TuningTable back;
  W4A16_ASSERT_OK(tuning_from_json(text, h200, &back));
  EXPECT_EQ(back, table);

  for (const TuningDevice& other : {TuningDevice{"NVIDIA H100 80GB HBM3", 132, "0.1.0"},
                                    TuningDevice{"NVIDIA H200", 114, "0.1.0"}, TuningDevice{"NVIDIA H200", 132, "0.2.0"}}) {
    SCOPED_TRACE(other.name + " " + std::to_string(other.sm_count) + " " + other.version);
    TuningTable untouched;
    W4A16_EXPECT_CODE(tuning_from_json(text, other, &untouched), StatusCode::kInvalidArgument);
    EXPECT_TRUE(untouched.empty());
  }
}

// A cuBLASLt config names the r-th candidate of one cuBLASLt version's heuristic: its entries load
// only under that version (the file records it); the other entries do not depend on it.
TEST(Tuning, CublasLtEntriesNeedTheSameCublasVersion) {
  TuningDevice written{"NVIDIA H200", 132, "0.1.0", 130100};
  TuningTable table;
  table[{4096, 8192, 8192, 128, {ElementType::kFloat16, QuantOp::kScaleOnly}}] = named("dequant_cublas_lt3");
  TuningTable fused_only;
  fused_only[{16, 4096, 4096, 128, {ElementType::kFloat16, QuantOp::kScaleOnly}}] = named("st_m16n32_w1x1x16_s3_k1");
  fused_only[{4096, 4096, 4096, 128, {ElementType::kFloat16, QuantOp::kScaleOnly}}] = named("dequant_cublas");
  TuningTable back;
  W4A16_ASSERT_OK(tuning_from_json(tuning_to_json(written, table), written, &back));
  EXPECT_EQ(back, table);

  TuningDevice upgraded = written;
  upgraded.cublas_version = 130200;
  TuningTable untouched;
  const Status refused = tuning_from_json(tuning_to_json(written, table), upgraded, &untouched);
  W4A16_EXPECT_CODE(refused, StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("dequant_cublas_lt3 was profiled with cuBLASLt 130100"), std::string::npos)
      << refused.message();
  EXPECT_TRUE(untouched.empty());
  // Without cuBLASLt entries the version does not matter, nor does a file that never recorded it.
  W4A16_ASSERT_OK(tuning_from_json(tuning_to_json(written, fused_only), upgraded, &untouched));
  EXPECT_EQ(untouched, fused_only);
  const std::string old_file =
      R"({"w4a16_tuning": 1, "device": "NVIDIA H200", "sm_count": 132, "version": "0.1.0", "entries": [)"
      R"({"m_bucket": 8, "n": 64, "k": 128, "group_size": 64, "format": "fp16", "config": "dequant_cublas"}]})";
  TuningTable from_old;
  W4A16_ASSERT_OK(tuning_from_json(old_file, upgraded, &from_old));
  EXPECT_EQ(from_old.size(), 1u);
}

TEST(Tuning, MalformedFilesAreRejectedWholly) {
  const TuningDevice device{"GPU", 10, "1"};
  auto file = [](const std::string& entries) {
    return R"({"w4a16_tuning": 1, "device": "GPU", "sm_count": 10, "version": "1", "entries": )" + entries + "}";
  };
  const std::string good = R"({"m_bucket": 8, "n": 64, "k": 128, "group_size": 64, "format": "fp16", "config": "dequant_cublas"})";
  TuningTable table;
  W4A16_ASSERT_OK(tuning_from_json(file("[" + good + "]"), device, &table));
  ASSERT_EQ(table.size(), 1u);
  const char* bad_entries[] = {
      R"([{"m_bucket": 6, "n": 64, "k": 128, "group_size": 64, "format": "fp16", "config": "dequant_cublas"}])",
      R"([{"m_bucket": 8, "n": -64, "k": 128, "group_size": 64, "format": "fp16", "config": "dequant_cublas"}])",
      R"([{"m_bucket": 8, "n": 64, "k": 128, "group_size": 64, "format": "fp8", "config": "dequant_cublas"}])",
      R"([{"m_bucket": 8, "n": 64, "k": 128, "group_size": 64, "format": "fp16", "config": "tc_m8n16_w1x1x8_s8_k1"}])",
      R"([{"m_bucket": 8, "n": 64, "k": 128, "format": "fp16", "config": "dequant_cublas"}])",
      R"([5])",
      R"({})",
  };
  for (const char* entries : bad_entries) {
    SCOPED_TRACE(entries);
    TuningTable before = table;
    W4A16_EXPECT_CODE(tuning_from_json(file(entries), device, &before), StatusCode::kInvalidArgument);
    EXPECT_EQ(before, table) << "a rejected file changed the table";
  }
  TuningTable t;
  W4A16_EXPECT_CODE(tuning_from_json("not json", device, &t), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(tuning_from_json(R"({"device": "GPU"})", device, &t), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace w4a16
