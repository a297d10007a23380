#include "runner/heuristics.h"

#include <algorithm>
#include <vector>

namespace w4a16::heuristics {

namespace {

struct TileChoice {
  int tile_m, tile_n, warps_m, warps_n, warps_k, stages;
};

// Candidate tiles per m bucket, widest n first. Small m streams weights: narrow in m, deep
// pipeline, and as narrow in n as it takes to give every SM a block (warps_k keeps 4 KB of weights
// per stage). Large m is compute bound: 128-row tiles so each dequantized weight fragment feeds 8
// mma instructions. Measured on H100 (bench/NOTES.md); the profiler refines per shape.
struct Bucket {
  int max_m;
  std::vector<TileChoice> tiles;
};
const std::vector<Bucket>& buckets() {
  static const std::vector<Bucket> table = {
      {8, {{8, 128, 1, 4, 1, 8}, {8, 64, 1, 4, 2, 8}, {8, 32, 1, 2, 4, 8}}},
      {16, {{16, 128, 1, 4, 1, 8}, {16, 64, 1, 4, 2, 8}, {16, 32, 1, 2, 4, 8}}},
      {32, {{32, 128, 1, 4, 1, 6}, {32, 64, 1, 2, 2, 6}}},
      {64, {{64, 128, 2, 4, 1, 5}}},
      {1 << 30, {{128, 128, 2, 4, 1, 4}}},
  };
  return table;
}

// From this m on, Hopper's cuBLAS (wgmma) on dequantized weights beats the mma.sync kernel.
constexpr int kDequantCublasMinM_Sm90 = 512;

// A tile is wide enough in n when it still gives ~every SM a block.
constexpr double kMinBlocksPerSm = 0.9;
// Split-K (a second, reducing kernel) only while the grid is under one wave of this many blocks
// per SM, and never below 4 k-blocks per split (the pipeline must reach steady state).
constexpr double kSplitTargetBlocksPerSm = 1.1;
constexpr int kMinKBlocksPerSplit = 4;

long long tile_count(int m, int n, const TileChoice& tile) {
  return static_cast<long long>((m + tile.tile_m - 1) / tile.tile_m) * ((n + tile.tile_n - 1) / tile.tile_n);
}

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

  const Bucket* bucket = &buckets().front();
  while (m > bucket->max_m) ++bucket;
  const TileChoice* tile = &bucket->tiles.back();
  for (const TileChoice& candidate : bucket->tiles) {
    if (tile_count(m, n, candidate) >= kMinBlocksPerSm * device.sm_count) {
      tile = &candidate;
      break;
    }
  }
  KernelConfig config;
  config.family = KernelFamily::kTensorCoreSm80;
  config.tile_m = tile->tile_m;
  config.tile_n = tile->tile_n;
  config.warps_m = tile->warps_m;
  config.warps_n = tile->warps_n;
  config.warps_k = tile->warps_k;
  config.stages = tile->stages;

  const long long tiles = tile_count(m, n, *tile);
  const int k_blocks = k / 64;
  int split = 1;
  for (int candidate : split_k_choices()) {
    if (candidate > 1 && tiles * candidate <= kSplitTargetBlocksPerSm * device.sm_count &&
        k_blocks / candidate >= kMinKBlocksPerSplit * tile->warps_k) {
      split = candidate;
    }
  }
  config.split_k = split;
  if (is_available(config)) return config;
  return dequant;
}

}  // namespace w4a16::heuristics
