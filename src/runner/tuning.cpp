// Tuning results to and from JSON (see tuning.h).
#include "runner/tuning.h"

#include <nlohmann/json.hpp>

namespace w4a16 {

namespace {

Status invalid(const std::string& message) { return Status(StatusCode::kInvalidArgument, "tuning: " + message); }

bool parse_format(const std::string& name, Format* format) {
  for (const Format& f : kAllFormats) {
    if (name == format_name(f)) {
      *format = f;
      return true;
    }
  }
  return false;
}

}  // namespace

int tuning_m_bucket(int m) {
  int bucket = 1;
  while (bucket < m && bucket < (1 << 30)) bucket *= 2;
  return m > (1 << 30) ? m : bucket;
}

std::string tuning_to_json(const TuningDevice& device, const TuningTable& table) {
  nlohmann::ordered_json entries = nlohmann::ordered_json::array();
  for (const auto& [key, config] : table) {
    const auto& [m, n, k, group, format] = key;
    entries.push_back({{"m_bucket", m}, {"n", n}, {"k", k}, {"group_size", group}, {"format", format_name(format)},
                       {"config", config.name()}});
  }
  nlohmann::ordered_json document = {{"w4a16_tuning", 1},
                                     {"device", device.name},
                                     {"sm_count", device.sm_count},
                                     {"version", device.version},
                                     {"cublas_version", device.cublas_version},
                                     {"entries", entries}};
  return document.dump(2) + "\n";
}

Status tuning_from_json(const std::string& text, const TuningDevice& device, TuningTable* table) {
  if (table == nullptr) return invalid("null output");
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    return invalid(std::string("not valid JSON: ") + error.what());
  }
  if (!document.is_object() || document.value("w4a16_tuning", 0) != 1) return invalid("not a w4a16 tuning file");
  const std::string name = document.value("device", std::string());
  const int sm_count = document.value("sm_count", 0);
  const std::string version = document.value("version", std::string());
  if (name != device.name || sm_count != device.sm_count || version != device.version) {
    return invalid("the file was written for " + name + " (" + std::to_string(sm_count) + " SMs, w4a16 " + version +
                   "), not " + device.name + " (" + std::to_string(device.sm_count) + " SMs, w4a16 " +
                   device.version + ")");
  }
  if (!document.contains("entries") || !document["entries"].is_array()) return invalid("no entries array");
  const nlohmann::json& cublas = document.contains("cublas_version") ? document["cublas_version"] : nlohmann::json(0);
  const long long cublas_version = cublas.is_number_integer() ? cublas.get<long long>() : -1;
  TuningTable read;
  for (const nlohmann::json& entry : document["entries"]) {
    if (!entry.is_object()) return invalid("an entry is not an object");
    for (const char* field : {"m_bucket", "n", "k", "group_size"}) {
      if (!entry.contains(field) || !entry[field].is_number_integer() || entry[field].get<long long>() <= 0 ||
          entry[field].get<long long>() > (1LL << 31) - 1) {
        return invalid(std::string("entry field '") + field + "' is not a positive int");
      }
    }
    Format format;
    KernelConfig config;
    if (!entry.contains("format") || !entry["format"].is_string() || !parse_format(entry["format"], &format)) {
      return invalid("entry with an unknown format");
    }
    if (!entry.contains("config") || !entry["config"].is_string() ||
        !parse_kernel_config(entry["config"].get<std::string>(), &config)) {
      return invalid("entry with an unknown config name");
    }
    if (config.family == KernelFamily::kDequantCublas && config.dense_algorithm > 0 &&
        cublas_version != device.cublas_version) {
      return invalid(config.name() + " was profiled with cuBLASLt " + std::to_string(cublas_version) + ", this is " +
                     std::to_string(device.cublas_version) +
                     ": its rank names a place in that version's candidate list; profile again");
    }
    const int m = entry["m_bucket"].get<int>();
    if (tuning_m_bucket(m) != m) return invalid("m_bucket " + std::to_string(m) + " is not a power of two");
    read[{m, entry["n"].get<int>(), entry["k"].get<int>(), entry["group_size"].get<int>(), format}] = config;
  }
  for (const auto& [key, config] : read) (*table)[key] = config;
  return Status::success();
}

}  // namespace w4a16
