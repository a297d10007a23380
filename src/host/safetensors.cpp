// safetensors reading and writing (host only; see w4a16/safetensors.h).
#include "w4a16/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

namespace w4a16 {

namespace {

struct DtypeName {
  TensorDtype dtype;
  const char* name;
  size_t bytes;
};
constexpr DtypeName kDtypes[] = {
    {TensorDtype::kBool, "BOOL", 1},      {TensorDtype::kU8, "U8", 1},     {TensorDtype::kI8, "I8", 1},
    {TensorDtype::kU16, "U16", 2},        {TensorDtype::kI16, "I16", 2},   {TensorDtype::kF16, "F16", 2},
    {TensorDtype::kBF16, "BF16", 2},      {TensorDtype::kU32, "U32", 4},   {TensorDtype::kI32, "I32", 4},
    {TensorDtype::kF32, "F32", 4},        {TensorDtype::kU64, "U64", 8},   {TensorDtype::kI64, "I64", 8},
    {TensorDtype::kF64, "F64", 8},        {TensorDtype::kF8E4M3, "F8_E4M3", 1},
    {TensorDtype::kF8E5M2, "F8_E5M2", 1},
};

// A header larger than this is not a checkpoint's (the hub caps headers at 100 MB too).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

Status invalid(const std::string& message) { return Status(StatusCode::kInvalidArgument, "safetensors: " + message); }

}  // namespace

const char* to_string(TensorDtype dtype) {
  for (const DtypeName& d : kDtypes)
    if (d.dtype == dtype) return d.name;
  return "unknown";
}

size_t dtype_bytes(TensorDtype dtype) {
  for (const DtypeName& d : kDtypes)
    if (d.dtype == dtype) return d.bytes;
  return 0;
}

int64_t TensorView::elements() const {
  int64_t count = 1;
  for (int64_t extent : shape) count *= extent;
  return count;
}

// The file's bytes: an mmap of a file, or a caller's buffer (parse()).
struct SafetensorsFile::Mapping {
  const uint8_t* data = nullptr;
  size_t size = 0;
  bool mapped = false;
  ~Mapping() {
    if (mapped && size > 0) munmap(const_cast<uint8_t*>(data), size);
  }
};

SafetensorsFile::SafetensorsFile() = default;
SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status SafetensorsFile::open(const std::string& path, SafetensorsFile* out) {
  if (out == nullptr) return invalid("null output");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return invalid("cannot open '" + path + "': " + std::strerror(errno));
  struct stat info;
  if (fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    return invalid("cannot stat '" + path + "': " + std::strerror(error));
  }
  auto mapping = std::make_unique<Mapping>();
  mapping->size = static_cast<size_t>(info.st_size);
  if (mapping->size > 0) {
    void* address = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      return invalid("cannot map '" + path + "': " + std::strerror(error));
    }
    mapping->data = static_cast<const uint8_t*>(address);
    mapping->mapped = true;
  }
  ::close(fd);  // the mapping stays valid
  SafetensorsFile file;
  if (Status s = parse(mapping->data, mapping->size, &file); !s.ok()) {
    return Status(s.code(), s.message() + " ('" + path + "')");
  }
  file.mapping_ = std::move(mapping);
  *out = std::move(file);
  return Status::success();
}

Status SafetensorsFile::parse(const uint8_t* data, size_t size, SafetensorsFile* out) {
  if (out == nullptr) return invalid("null output");
  if (data == nullptr && size > 0) return invalid("null data");
  if (size < 8) return invalid("file of " + std::to_string(size) + " bytes has no 8-byte header length");
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | data[i];  // little-endian
  if (header_bytes > size - 8) {
    return invalid("header length " + std::to_string(header_bytes) + " runs past the end of the file (" +
                   std::to_string(size) + " bytes)");
  }
  if (header_bytes > kMaxHeaderBytes) return invalid("header of " + std::to_string(header_bytes) + " bytes is too large");
  const char* header_begin = reinterpret_cast<const char*>(data + 8);
  const uint8_t* payload = data + 8 + header_bytes;
  const size_t payload_bytes = size - 8 - static_cast<size_t>(header_bytes);

  // Parse, noting duplicate names at the top level (nlohmann keeps the last of duplicate keys
  // without a word, so the callback counts them as they stream by).
  std::set<std::string> top_level_keys;
  std::string duplicate;
  const nlohmann::json::parser_callback_t note_duplicates = [&](int depth, nlohmann::json::parse_event_t event,
                                                                nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      if (!top_level_keys.insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_begin, header_begin + header_bytes, note_duplicates);
  } catch (const nlohmann::json::exception& error) {
    return invalid(std::string("header is not valid JSON: ") + error.what());
  }
  if (!header.is_object()) return invalid("header is not a JSON object");
  if (!duplicate.empty()) return invalid("duplicate entry '" + duplicate + "'");

  SafetensorsFile file;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return invalid("__metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) return invalid("__metadata__ value '" + m.key() + "' is not a string");
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!entry.is_object()) return invalid(where + "entry is not an object");
    const auto dtype_field = entry.find("dtype");
    const auto shape_field = entry.find("shape");
    const auto offsets_field = entry.find("data_offsets");
    if (dtype_field == entry.end() || !dtype_field->is_string()) return invalid(where + "no dtype string");
    if (shape_field == entry.end() || !shape_field->is_array()) return invalid(where + "no shape array");
    if (offsets_field == entry.end() || !offsets_field->is_array() || offsets_field->size() != 2) {
      return invalid(where + "data_offsets is not a pair");
    }
    TensorView view;
    view.name = name;
    const std::string dtype_name = dtype_field->get<std::string>();
    const DtypeName* dtype = nullptr;
    for (const DtypeName& d : kDtypes)
      if (dtype_name == d.name) dtype = &d;
    if (dtype == nullptr) return invalid(where + "unknown dtype '" + dtype_name + "'");
    view.dtype = dtype->dtype;
    // Element count, refusing negative extents and products that overflow.
    uint64_t elements = 1;
    for (const nlohmann::json& extent : *shape_field) {
      if (!extent.is_number_unsigned()) return invalid(where + "shape holds a value that is not a non-negative integer");
      const uint64_t value = extent.get<uint64_t>();
      if (value != 0 && elements > std::numeric_limits<uint64_t>::max() / value) return invalid(where + "shape overflows");
      elements *= value;
      view.shape.push_back(static_cast<int64_t>(std::min<uint64_t>(value, std::numeric_limits<int64_t>::max())));
    }
    if (elements > std::numeric_limits<uint64_t>::max() / dtype->bytes) return invalid(where + "shape overflows");
    const nlohmann::json& begin_field = (*offsets_field)[0];
    const nlohmann::json& end_field = (*offsets_field)[1];
    if (!begin_field.is_number_unsigned() || !end_field.is_number_unsigned()) {
      return invalid(where + "data_offsets are not non-negative integers");
    }
    const uint64_t begin = begin_field.get<uint64_t>(), end = end_field.get<uint64_t>();
    if (begin > end) return invalid(where + "data_offsets begin after they end");
    if (end > payload_bytes) {
      return invalid(where + "data [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") runs past the end of the data (" + std::to_string(payload_bytes) + " bytes)");
    }
    if (end - begin != elements * dtype->bytes) {
      return invalid(where + "shape holds " + std::to_string(elements) + " x " + std::to_string(dtype->bytes) +
                     " bytes but data_offsets span " + std::to_string(end - begin));
    }
    view.data = payload + begin;
    view.bytes = static_cast<size_t>(end - begin);
    file.tensors_.push_back(std::move(view));
  }
  // No two tensors may share bytes (empty tensors occupy none).
  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorView& a, const TensorView& b) { return a.data < b.data || (a.data == b.data && a.bytes < b.bytes); });
  const uint8_t* covered = payload;
  const TensorView* last = nullptr;
  for (const TensorView& view : file.tensors_) {
    if (view.bytes == 0) continue;
    if (view.data < covered) return invalid("tensors '" + last->name + "' and '" + view.name + "' overlap");
    covered = view.data + view.bytes;
    last = &view;
  }
  for (size_t i = 0; i < file.tensors_.size(); ++i) file.index_[file.tensors_[i].name] = i;
  *out = std::move(file);
  return Status::success();
}

Status write_safetensors(const std::vector<TensorData>& tensors, const std::map<std::string, std::string>& metadata,
                         std::vector<uint8_t>* out) {
  if (out == nullptr) return invalid("null output");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = meta;
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorData& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second) return invalid("duplicate or reserved name '" + t.name + "'");
    uint64_t elements = 1;
    for (int64_t extent : t.shape) {
      if (extent < 0) return invalid("tensor '" + t.name + "': negative extent");
      if (extent != 0 && elements > std::numeric_limits<uint64_t>::max() / 8 / static_cast<uint64_t>(extent)) {
        return invalid("tensor '" + t.name + "': shape overflows");
      }
      elements *= static_cast<uint64_t>(extent);
    }
    if (elements * dtype_bytes(t.dtype) != t.bytes.size()) {
      return invalid("tensor '" + t.name + "': shape does not match its " + std::to_string(t.bytes.size()) + " bytes");
    }
    header[t.name] = {{"dtype", to_string(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& error) {  // a name or metadata value that is not UTF-8
    return invalid(std::string("cannot write the header: ") + error.what());
  }
  // Pad the header with spaces to a multiple of 8 bytes, as the reference writer does, so that the
  // data starts 8-byte aligned in the file.
  text.append((8 - text.size() % 8) % 8, ' ');
  out->clear();
  out->reserve(8 + text.size() + offset);
  const uint64_t header_bytes = text.size();
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<uint8_t>(header_bytes >> (8 * i)));
  out->insert(out->end(), text.begin(), text.end());
  for (const TensorData& t : tensors) out->insert(out->end(), t.bytes.begin(), t.bytes.end());
  return Status::success();
}

}  // namespace w4a16
