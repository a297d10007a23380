// safetensors reading: valid files round-trip through write_safetensors and the reader (from a
// buffer and memory-mapped from disk); every malformed-file case returns its error; a fuzz-style
// test throws truncations and mutated headers at the reader, which must answer each with a status
// and read nothing outside the buffer.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"
#include "w4a16/safetensors.h"

namespace w4a16 {
namespace {

using test::Random;

std::vector<uint8_t> random_bytes(Random& rng, size_t count) {
  std::vector<uint8_t> out(count);
  for (auto& b : out) b = uint8_t(rng.uniform_int(0, 255));
  return out;
}

// A small checkpoint-like file: a GPTQ-style layer (int32 qweight, fp16 scales, int32 g_idx), a
// bf16 bias, an empty tensor and metadata.
std::vector<TensorData> sample_tensors(Random& rng) {
  return {
      {"model.layers.0.mlp.up_proj.qweight", TensorDtype::kI32, {16, 48}, random_bytes(rng, 16 * 48 * 4)},
      {"model.layers.0.mlp.up_proj.scales", TensorDtype::kF16, {1, 48}, random_bytes(rng, 48 * 2)},
      {"model.layers.0.mlp.up_proj.g_idx", TensorDtype::kI32, {128}, random_bytes(rng, 128 * 4)},
      {"model.layers.0.mlp.up_proj.bias", TensorDtype::kBF16, {48}, random_bytes(rng, 48 * 2)},
      {"empty", TensorDtype::kF32, {0, 7}, {}},
  };
}

// The file's JSON header with `edit` applied, re-serialized around the same data.
std::vector<uint8_t> with_header(const std::vector<uint8_t>& file, const std::string& header) {
  uint64_t old_bytes = 0;
  for (int i = 7; i >= 0; --i) old_bytes = (old_bytes << 8) | file[i];
  std::vector<uint8_t> out;
  const uint64_t bytes = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(uint8_t(bytes >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), file.begin() + 8 + old_bytes, file.end());
  return out;
}

std::string header_of(const std::vector<uint8_t>& file) {
  uint64_t bytes = 0;
  for (int i = 7; i >= 0; --i) bytes = (bytes << 8) | file[i];
  return std::string(file.begin() + 8, file.begin() + 8 + bytes);
}

TEST(Safetensors, RoundTripsFromABufferAndFromDisk) {
  W4A16_RANDOM(rng);
  const std::vector<TensorData> tensors = sample_tensors(rng);
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"quant_method", "gptq"}};
  std::vector<uint8_t> bytes;
  W4A16_ASSERT_OK(write_safetensors(tensors, metadata, &bytes));
  EXPECT_EQ(header_of(bytes).size() % 8, 0u) << "the data starts 8-byte aligned";

  auto check = [&](const SafetensorsFile& file) {
    ASSERT_EQ(file.tensors().size(), tensors.size());
    EXPECT_EQ(file.metadata(), metadata);
    for (const TensorData& t : tensors) {
      SCOPED_TRACE(t.name);
      const TensorView* view = file.find(t.name);
      ASSERT_NE(view, nullptr);
      EXPECT_EQ(view->dtype, t.dtype);
      EXPECT_EQ(view->shape, t.shape);
      ASSERT_EQ(view->bytes, t.bytes.size());
      EXPECT_EQ(size_t(view->elements()) * dtype_bytes(t.dtype), t.bytes.size());
      if (!t.bytes.empty()) {
        EXPECT_EQ(std::memcmp(view->data, t.bytes.data(), t.bytes.size()), 0);
      }
    }
    EXPECT_EQ(file.find("missing"), nullptr);
    EXPECT_EQ(file.find("__metadata__"), nullptr);
  };
  SafetensorsFile from_buffer;
  W4A16_ASSERT_OK(SafetensorsFile::parse(bytes.data(), bytes.size(), &from_buffer));
  check(from_buffer);

  char path[] = "/tmp/w4a16_safetensors_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()), ssize_t(bytes.size()));
  close(fd);
  SafetensorsFile from_disk;
  W4A16_EXPECT_OK(SafetensorsFile::open(path, &from_disk));
  check(from_disk);
  // Moving the file keeps its views valid (they point into the mapping, which moves along).
  SafetensorsFile moved = std::move(from_disk);
  check(moved);
  std::remove(path);

  SafetensorsFile missing;
  W4A16_EXPECT_CODE(SafetensorsFile::open("/nonexistent/w4a16.safetensors", &missing), StatusCode::kInvalidArgument);
}

TEST(Safetensors, MalformedFilesGetTheirError) {
  W4A16_RANDOM(rng);
  std::vector<uint8_t> good;
  W4A16_ASSERT_OK(write_safetensors(sample_tensors(rng), {{"format", "pt"}}, &good));
  const std::string header = header_of(good);
  struct Case {
    const char* what;
    std::vector<uint8_t> bytes;
    const char* message;  // a part of the expected message
  };
  std::vector<uint8_t> long_length = good;
  long_length[0] = 0xFF;
  long_length[7] = 0x01;
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string h = header;
    const size_t at = h.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) h.replace(at, from.size(), to);
    return with_header(good, h);
  };
  const std::vector<Case> cases = {
      {"empty file", {}, "no 8-byte header length"},
      {"seven bytes", std::vector<uint8_t>(good.begin(), good.begin() + 7), "no 8-byte header length"},
      {"truncated inside the header", std::vector<uint8_t>(good.begin(), good.begin() + 40), "runs past the end"},
      {"truncated inside the data", std::vector<uint8_t>(good.begin(), good.end() - 1), "runs past the end of the data"},
      {"header length past the end", long_length, "runs past the end of the file"},
      {"not JSON", with_header(good, "{\"a\": [1, 2"), "not valid JSON"},
      {"not an object", with_header(good, "[1, 2, 3]"), "not a JSON object"},
      {"unknown dtype", replaced("\"dtype\":\"F16\"", "\"dtype\":\"F17\""), "unknown dtype 'F17'"},
      {"shape/bytes mismatch", replaced("\"shape\":[1,48]", "\"shape\":[2,48]"), "data_offsets span"},
      {"negative extent", replaced("\"shape\":[1,48]", "\"shape\":[-1,48]"), "not a non-negative integer"},
      {"fractional extent", replaced("\"shape\":[1,48]", "\"shape\":[1.5,48]"), "not a non-negative integer"},
      {"overflowing shape", replaced("\"shape\":[1,48]", "\"shape\":[4294967296,4294967296,48]"), "overflows"},
      {"offsets past the end", replaced("\"data_offsets\":[3072,3168]", "\"data_offsets\":[3072,999999]"),
       "runs past the end of the data"},
      {"offsets backwards", replaced("\"data_offsets\":[3072,3168]", "\"data_offsets\":[3168,3072]"),
       "begin after they end"},
      {"overlapping tensors", replaced("\"data_offsets\":[3072,3168]", "\"data_offsets\":[3000,3096]"), "overlap"},
      {"offsets not a pair", replaced("\"data_offsets\":[3072,3168]", "\"data_offsets\":[3072]"), "not a pair"},
      {"no dtype", replaced("\"dtype\":\"F16\",", ""), "no dtype"},
      {"duplicate name", with_header(good, "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                                           "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}"),
       "duplicate entry 'x'"},
      {"metadata not strings", replaced("\"format\":\"pt\"", "\"format\":3"), "is not a string"},
      {"entry not an object", with_header(good, "{\"x\": 5}"), "entry is not an object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    SafetensorsFile file;
    const Status s = SafetensorsFile::parse(c.bytes.data(), c.bytes.size(), &file);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s.message();
    EXPECT_TRUE(file.tensors().empty());
  }
  // The good file itself parses (the cases above edit something that matters).
  SafetensorsFile file;
  W4A16_EXPECT_OK(SafetensorsFile::parse(good.data(), good.size(), &file));
}

// Every truncation, and random mutations of the header's bytes and of its length field: the reader
// answers each with success or kInvalidArgument, and whatever it accepts lies inside the buffer.
// The buffer is an exact-size heap copy, so a read past its end is what valgrind or ASan (or a
// crash) would report.
TEST(Safetensors, FuzzedFilesNeverCrashTheReader) {
  W4A16_RANDOM(rng);
  std::vector<uint8_t> good;
  W4A16_ASSERT_OK(write_safetensors(sample_tensors(rng), {{"format", "pt"}}, &good));
  const size_t header_bytes = header_of(good).size();
  int accepted = 0, rejected = 0;
  auto try_parse = [&](const std::vector<uint8_t>& bytes) {
    std::vector<uint8_t> exact(bytes);  // its own allocation of exactly bytes.size()
    SafetensorsFile file;
    const Status s = SafetensorsFile::parse(exact.data(), exact.size(), &file);
    if (s.ok()) {
      ++accepted;
      for (const TensorView& view : file.tensors()) {
        ASSERT_GE(view.data, exact.data() + 8) << view.name;
        ASSERT_LE(view.data + view.bytes, exact.data() + exact.size()) << view.name;
      }
    } else {
      ++rejected;
      ASSERT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
      ASSERT_FALSE(s.message().empty());
    }
  };
  for (size_t length = 0; length < good.size(); ++length) {
    ASSERT_NO_FATAL_FAILURE(try_parse(std::vector<uint8_t>(good.begin(), good.begin() + length)));
  }
  // Structural characters and digits are the interesting mutations of a JSON header.
  const char alphabet[] = "{}[]\":,0123456789-.eE ";
  for (int trial = 0; trial < 4000; ++trial) {
    std::vector<uint8_t> bytes = good;
    const int edits = rng.uniform_int(1, 4);
    for (int e = 0; e < edits; ++e) {
      const int kind = rng.uniform_int(0, 3);
      if (kind == 0) {  // a header byte from the alphabet
        bytes[8 + rng.uniform_int(0, int(header_bytes) - 1)] = uint8_t(alphabet[rng.uniform_int(0, sizeof(alphabet) - 2)]);
      } else if (kind == 1) {  // any header byte
        bytes[8 + rng.uniform_int(0, int(header_bytes) - 1)] = uint8_t(rng.uniform_int(0, 255));
      } else if (kind == 2) {  // a byte of the length field
        bytes[rng.uniform_int(0, 7)] = uint8_t(rng.uniform_int(0, 255));
      } else {  // cut the file anywhere
        bytes.resize(size_t(rng.uniform_int(0, int(bytes.size()))));
        if (bytes.size() < 8) break;
      }
      if (bytes.size() < 8) break;
    }
    ASSERT_NO_FATAL_FAILURE(try_parse(bytes));
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);  // the untruncated prefix of a mutation that hit only padding or a digit
  std::printf("fuzzed: %d accepted, %d rejected\n", accepted, rejected);
}

TEST(Safetensors, WriterRejectsInconsistentTensors) {
  std::vector<uint8_t> out;
  W4A16_EXPECT_CODE(write_safetensors({{"a", TensorDtype::kF16, {3}, std::vector<uint8_t>(5)}}, {}, &out),
                    StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(write_safetensors({{"a", TensorDtype::kU8, {1}, {1}}, {"a", TensorDtype::kU8, {1}, {2}}}, {}, &out),
                    StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(write_safetensors({{"__metadata__", TensorDtype::kU8, {1}, {1}}}, {}, &out),
                    StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(write_safetensors({{"a", TensorDtype::kU8, {-1}, {}}}, {}, &out), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(write_safetensors({}, {}, nullptr), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace w4a16
