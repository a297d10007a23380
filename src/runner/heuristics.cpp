#include "runner/heuristics.h"

#include <algorithm>

namespace w4a16::heuristics {

namespace {

struct TileChoice {
  int max_m;  // use this tile for m up to here
  int tile_m, tile_n, warps_m, warps_n, stages;
};

// Tile by m. Small m streams weights: narrow in m, deep pipeline. Large m is compute bound:
// 128-row tiles so each dequantized weight fragment feeds 8 mma instructions.
// Measured on H100 (bench/NOTES.md); the profiler refines per shape.
constexpr TileChoice kTileTable[] = {
    {8, 8, 128, 1, 4, 8},
    {16, 16, 128, 1, 4, 8},
    {32, 32, 128, 1, 4, 6},
    {64, 64, 128, 2, 4, 5},
    {1 << 30, 128, 128, 2, 4, 4},
};

// From this m on, Hopper's cuBLAS (wgmma) on dequantized weights beats the mma.sync kernel.
constexpr int kDequantCublasMinM_Sm90 = 512;

// Blocks to aim for: two per SM keeps HBM busy while one block is in its prologue or epilogue.
constexpr int kBlocksPerSm = 2;
// A split needs enough k-blocks for its pipeline to reach steady state.
constexpr int kMinKBlocksPerSplit = 4;

}  // namespace

const std::vector<int>& split_k_choices() {
  static const std::vector<int> choices = {1, 2, 4, 8, 16};
  return choices;
}

KernelConfig choose(int m, int n, int k, const DeviceTraits& device, const std::vector<KernelConfig>& available) {
  KernelConfig dequant;
  dequant.family = KernelFamily::kDequantCublas;
  auto is_available = [&](const KernelConfig& config) {
    return std::find(available.begin(), available.end(), config) != available.end();
  };

  if (device.sm_version >= 90 && m >= kDequantCublasMinM_Sm90 && is_available(dequant)) return dequant;

  const TileChoice* tile = &kTileTable[0];
  while (m > tile->max_m) ++tile;
  KernelConfig config;
  config.family = KernelFamily::kTensorCoreSm80;
  config.tile_m = tile->tile_m;
  config.tile_n = tile->tile_n;
  config.warps_m = tile->warps_m;
  config.warps_n = tile->warps_n;
  config.stages = tile->stages;

  const long long tiles = static_cast<long long>((m + tile->tile_m - 1) / tile->tile_m) *
                          ((n + tile->tile_n - 1) / tile->tile_n);
  const int k_blocks = k / 64;
  const long long target_blocks = static_cast<long long>(kBlocksPerSm) * device.sm_count;
  int split = 1;
  for (int candidate : split_k_choices()) {
    if (candidate > 1 && tiles * candidate <= target_blocks && k_blocks / candidate >= kMinKBlocksPerSplit) {
      split = candidate;
    }
  }
  config.split_k = split;
  if (is_available(config)) return config;
  return dequant;
}

}  // namespace w4a16::heuristics
