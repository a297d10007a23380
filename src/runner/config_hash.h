#pragma once
// Hashes for the runner's per-call lookups: is a config listed, and which compiled kernel serves a
// (config, format) pair. check() and gemm() do both on every call; linear scans over the ~200
// configs and ~1270 (config, format) entries of six formats cost microseconds per eager call
// (bench/NOTES.md, entry 32).
//
// Consistent with KernelConfig::operator== by construction: the hash reads exactly the fields
// operator== compares (for dequant_cublas the family and dense_algorithm, for the fused families
// the tile, warps, stages and split-K), so equal configs hash equal.

#include <cstddef>
#include <utility>

#include "w4a16/format.h"
#include "w4a16/runner.h"

namespace w4a16 {

struct KernelConfigHash {
  size_t operator()(const KernelConfig& config) const noexcept {
    size_t hash = static_cast<size_t>(config.family);
    const auto mix = [&hash](int value) {
      // 64-bit FNV-1a step per field: fields are small integers, so a multiply per field is
      // enough to spread them over the buckets.
      hash = (hash ^ static_cast<size_t>(static_cast<unsigned>(value))) * 1099511628211ull;
    };
    if (config.family == KernelFamily::kDequantCublas) {
      mix(config.dense_algorithm);
      return hash;
    }
    for (int field : {config.tile_m, config.tile_n, config.warps_m, config.warps_n, config.warps_k, config.stages,
                      config.split_k}) {
      mix(field);
    }
    return hash;
  }
};

struct ConfigFormatHash {
  size_t operator()(const std::pair<KernelConfig, Format>& key) const noexcept {
    return KernelConfigHash{}(key.first) * 31 + static_cast<size_t>(key.second.element) * 7 +
           static_cast<size_t>(key.second.quant);
  }
};

}  // namespace w4a16
