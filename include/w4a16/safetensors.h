#pragma once
// Reading safetensors files (the format of every 4-bit checkpoint on the hub), host only.
//
// A file is: an 8-byte little-endian header length N, N bytes of JSON, then the tensor data.
// The JSON object maps each tensor's name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the first byte after the header) and may hold a "__metadata__" object of
// string values. SafetensorsFile memory-maps the file (no copy) and checks everything before it
// hands out a tensor: the header length against the file, the JSON, every entry's dtype, shape
// and offsets (inside the data, shape x element size == end - begin, no two tensors overlapping),
// duplicate names. A malformed file is a Status with a message, never a crash.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "w4a16/status.h"

namespace w4a16 {

enum class TensorDtype {
  kBool, kU8, kI8, kU16, kI16, kF16, kBF16, kU32, kI32, kF32, kU64, kI64, kF64, kF8E4M3, kF8E5M2,
};
// The name safetensors uses ("F16", "BF16", "I32", ...).
const char* to_string(TensorDtype dtype);
size_t dtype_bytes(TensorDtype dtype);

// One tensor of an open file; `data` points into the mapping (no alignment promised: copy with
// memcpy) and lives as long as the SafetensorsFile.
struct TensorView {
  std::string name;
  TensorDtype dtype = TensorDtype::kU8;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;

  int64_t elements() const;
};

class SafetensorsFile {
 public:
  SafetensorsFile();
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Maps `path` read-only and validates it.
  static Status open(const std::string& path, SafetensorsFile* out);
  // Validates `size` bytes at `data` as a safetensors file without copying them: the caller keeps
  // them alive as long as the returned file (the fuzz tests' entry point).
  static Status parse(const uint8_t* data, size_t size, SafetensorsFile* out);

  // Every tensor, in the order of their data offsets.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // The tensor called `name`, or nullptr.
  const TensorView* find(const std::string& name) const;
  // The "__metadata__" object (empty when there is none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Mapping;
  std::unique_ptr<Mapping> mapping_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Serializes tensors (name, dtype, shape, bytes) and metadata into the safetensors layout, in the
// order given, each tensor's data right after the previous one's (tests, and the importer's
// output). Fails on a shape whose element count does not match the bytes.
struct TensorData {
  std::string name;
  TensorDtype dtype = TensorDtype::kU8;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
Status write_safetensors(const std::vector<TensorData>& tensors, const std::map<std::string, std::string>& metadata,
                         std::vector<uint8_t>* out);

}  // namespace w4a16
