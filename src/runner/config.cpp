// KernelConfig naming: a stable, human-readable name that round-trips through parse_kernel_config,
// used by the CLI's --config, the profiler's report and the tests.
#include <cstdio>
#include <string>

#include "w4a16/runner.h"

namespace w4a16 {

const char* to_string(KernelFamily family) {
  switch (family) {
    case KernelFamily::kMultistage: return "multistage";
    case KernelFamily::kWarpSpecialized: return "warp_specialized";
    case KernelFamily::kStreaming: return "streaming";
    case KernelFamily::kDequantCublas: return "dequant_cublas";
  }
  return "unknown";
}

namespace {

// Name prefixes of the fused families.
constexpr struct {
  KernelFamily family;
  const char* prefix;
} kPrefixes[] = {
    {KernelFamily::kMultistage, "ms"},
    {KernelFamily::kWarpSpecialized, "ws"},
    {KernelFamily::kStreaming, "st"},
};

const char* prefix(KernelFamily family) {
  for (const auto& entry : kPrefixes)
    if (entry.family == family) return entry.prefix;
  return "??";
}

}  // namespace

std::string KernelConfig::name() const {
  if (family == KernelFamily::kDequantCublas) {
    return dense_algorithm == 0 ? "dequant_cublas" : "dequant_cublas_lt" + std::to_string(dense_algorithm);
  }
  char buffer[96];
  std::snprintf(buffer, sizeof(buffer), "%s_m%dn%d_w%dx%dx%d_s%d_k%d",
                prefix(family), tile_m, tile_n, warps_m, warps_n, warps_k, stages,
                split_k);
  return buffer;
}

bool KernelConfig::operator==(const KernelConfig& other) const {
  if (family != other.family) return false;
  if (family == KernelFamily::kDequantCublas) return dense_algorithm == other.dense_algorithm;
  return tile_m == other.tile_m && tile_n == other.tile_n && warps_m == other.warps_m && warps_n == other.warps_n &&
         warps_k == other.warps_k && stages == other.stages && split_k == other.split_k;
}

bool parse_kernel_config(const std::string& name, KernelConfig* config) {
  if (config == nullptr) return false;
  if (name == "dequant_cublas") {
    *config = KernelConfig{};
    config->family = KernelFamily::kDequantCublas;
    return true;
  }
  // "dequant_cublas_lt<r>", r a positive decimal without leading zeros (the runner's configs()
  // says which ranks it offers).
  const std::string lt_prefix = "dequant_cublas_lt";
  if (name.compare(0, lt_prefix.size(), lt_prefix) == 0) {
    const std::string digits = name.substr(lt_prefix.size());
    if (digits.empty() || digits.size() > 2 || digits[0] == '0' ||
        digits.find_first_not_of("0123456789") != std::string::npos) {
      return false;
    }
    *config = KernelConfig{};
    config->family = KernelFamily::kDequantCublas;
    config->dense_algorithm = std::stoi(digits);
    return true;
  }
  KernelConfig parsed;
  int consumed = 0;
  bool known = false;
  for (const auto& entry : kPrefixes) {
    if (name.size() >= 3 && name.compare(0, 2, entry.prefix) == 0 && name[2] == '_') {
      parsed.family = entry.family;
      known = true;
    }
  }
  if (!known) return false;
  if (std::sscanf(name.c_str() + 3, "m%dn%d_w%dx%dx%d_s%d_k%d%n", &parsed.tile_m, &parsed.tile_n, &parsed.warps_m,
                  &parsed.warps_n, &parsed.warps_k, &parsed.stages, &parsed.split_k, &consumed) != 7 ||
      consumed + 3 != static_cast<int>(name.size())) {
    return false;
  }
  // sscanf's %d also takes spaces, signs and leading zeros; only the canonical spelling of
  // positive fields counts.
  if (parsed.name() != name || parsed.tile_m <= 0 || parsed.tile_n <= 0 || parsed.warps_m <= 0 ||
      parsed.warps_n <= 0 || parsed.warps_k <= 0 || parsed.stages <= 0 || parsed.split_k <= 0) {
    return false;
  }
  *config = parsed;
  return true;
}

}  // namespace w4a16
