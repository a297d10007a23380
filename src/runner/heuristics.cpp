#include "runner/heuristics.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <vector>

namespace w4a16::heuristics {

namespace {

struct TileChoice {
  int max_m;  // use this tile for m up to here
  int tile_m, tile_n, warps_m, warps_n, warps_k, stages;
  int max_split_k = 16;
  KernelFamily family = KernelFamily::kMultistage;
  // Split-K never leaves a warp fewer k-blocks than this: below it the pipeline never reaches
  // steady state (mma.sync: 4; warp-specialized tiles, whose slots hold two k-blocks, are
  // released one slot late and number 4-8: 16).
  int min_k_blocks_per_warp = 4;
  // Split-K stops at the first factor giving this many blocks per SM. The mma.sync winners had
  // 1.5-3 blocks per SM (bench/NOTES.md, entry 4); the warp-specialized tiles stop at 0.6: two
  // of the small ones fit per SM, and at m = 128 and k = 4096 their split-K partials (split x m x
  // n fp32, written and read back) cost as much as the weights (entries 14, 18).
  double target_blocks_per_sm = 1.5;
  // ... unless a slice would still hold more k-blocks than this: on long-k layers at m <= 64 the
  // warp-specialized tiles stream better with four slices than with two (8192x28672: 76 vs 87 us
  // at m = 64), where the block count alone would stop at two.
  int max_k_blocks_per_split = std::numeric_limits<int>::max();
};

// One tile per m bucket, read off `w4a16 bench --profile` on H100 (bench/NOTES.md, runs 4 and 9):
//  - m <= 32: 128 channels, 8 warps split 4 x 2 along n x k; what wins is many warps with a
//    stage in flight each, not wide warp tiles (issue-bound dequant, not bandwidth-bound).
//  - m <= 64: one 64-row tile, four warps side by side along n: every dequantized weight fragment
//    feeds 8 mma (two 32-row tiles dequantized every weight twice and ran 20% slower).
//  - m > 64: 128 x 128 with four 64 x 64 warp tiles: 32 mma per k slice per warp, each
//    dequantized weight fragment feeds 8 of them; two blocks per SM.
constexpr TileChoice kTileTable[] = {
    {8, 8, 128, 1, 4, 2, 6},
    {16, 16, 128, 1, 4, 2, 6},
    {32, 32, 128, 1, 4, 2, 4},
    {64, 64, 128, 1, 4, 1, 4},
    {std::numeric_limits<int>::max(), 128, 128, 2, 2, 1, 4},
};

constexpr long long kSmallLayerElements = 4096LL * 4096;
constexpr TileChoice kSmallLayerTile = {8, 8, 16, 1, 1, 8, 8};
// ... and up to m = 32 the same idea with 16-row tiles (at m = 32 two of them): 16x4096x4096
// 10.3 us vs 11.9 for the table's tile, 32x4096x4096 11.7 vs 12.7 (bench/NOTES.md, entry 13).
constexpr TileChoice kSmallLayerTileM16 = {32, 16, 32, 1, 2, 4, 8};

// Mid-sized layers at decode (e.g. 11008 x 4096): when the 128-channel tiles already give ~0.6
// blocks per SM, 16 warps per block (4 along k) without split-K beat the 8-warp tile split 4 ways:
// no reducing kernel, whose launch is a good part of a 14 us call (bench/NOTES.md, entry 9).
constexpr TileChoice kWideKDecodeTile = {8, 8, 128, 1, 4, 4, 4, /*max_split_k=*/1};
constexpr double kWideKMinBlocksPerSm = 0.6;

// Hopper with the warp-specialized wgmma tiles (sm_90a build), from m = 17 on. Read off a forced-
// config sweep in the benchmark's graph harness over the six default layers at m = 32 .. 4096
// (bench/NOTES.md, entry 18): they beat the multistage wgmma tiles they replaced by 10-25% at
// m = 64 .. 512 and the mma.sync tiles at m = 32, and tied with them at m = 1024. 32-, 64- and 128-row tiles, one
// consumer warpgroup per 64 channels; the 32- and 64-row ones run two blocks per SM. Split-K
// stops at 0.6 blocks per SM (two blocks fit per SM for the small tiles, and the split's partial
// sums cost as much as the weights at m = 128), except that m <= 64 keeps splitting long k.
constexpr int kWarpSpecializedMinM = 17;
constexpr TileChoice kWarpSpecializedTable[] = {
    {32, 32, 128, 1, 8, 1, 6, 16, KernelFamily::kWarpSpecialized, 16, 0.6, 128},
    {64, 64, 128, 1, 8, 1, 4, 16, KernelFamily::kWarpSpecialized, 16, 0.6, 128},
    {std::numeric_limits<int>::max(), 128, 128, 1, 8, 1, 5, 16, KernelFamily::kWarpSpecialized, 16, 0.6},
};
// From m = 65, the 256-channel tile (one block per SM) when its tiles use the SMs' waves well
// (tiles / (waves x SMs) >= kWideTileMinWaveUse; no split-K): each activation tile read from
// L2 then feeds twice the weights, and at m >= 128 the activations are 2-4x the weight bytes
// crossing L2. Measured (bench/NOTES.md, entry 19): 128x28672x8192 105.0 vs 113.4 us (112 tiles,
// 0.85 of a wave), 1024x8192x8192 211.2 vs 228.0 (256 tiles, 1.94 waves); 512x11008x4096 (172
// tiles, 1.3 waves) 105.6 vs 88.8, hence the wave rule. At m <= 64 it was no faster.
constexpr TileChoice kWarpSpecializedWideTile = {std::numeric_limits<int>::max(), 128, 256, 1, 8, 1, 4, 1,
                                                 KernelFamily::kWarpSpecialized, 16, 0.6};
constexpr double kWideTileMinWaveUse = 0.8;

// From this m on, Hopper's cuBLAS (wgmma, TMA, warp-specialized) on dequantized weights beats our
// kernels: with the warp-specialized tiles at m = 2048 the fused kernel still wins (28672x8192:
// 1764 vs 1811 us), at 4096 not (3572 vs 3223); without them already at 512.
constexpr int kDequantCublasMinM_Sm90 = 512;
constexpr int kDequantCublasMinM_WarpSpecialized = 3072;

// Decode (m <= 16): the streaming family (warp-private stages, no block barrier, no split-K). The
// tile is the first of the rules below whose condition holds on this layer and which is compiled
// and fits here (these tiles take 51-156 KB of shared memory per block: on sm_86 / sm_89, with
// ~100 KB per SM, only the 8-row 8-warp tiles of 3 stages fit, 32 or 64 channels per warp, one
// block per SM; nothing there was measured); where none applies, the multistage tiles take over.
// Read off forced-config sweeps in the benchmark's graph harness on H100 and H200
// (bench/NOTES.md, entries 16, 19, 21 and 22).
//
// What decides it is bytes in flight against the grid's shape. A warp keeps (Stages - 1) k-blocks
// of its weights in flight (1 KB each at 32 channels, 2 KB at 64): on H100 ~6 MB over the GPU
// covers HBM's bandwidth-latency product and the 32- and 64-channel tiles tie, but on H200 (4.5
// TB/s) the 32-channel tiles stall at ~2.8 TB/s and the 64-channel ones run ~20% faster
// (1x8192x28672 35.1 vs 43.2 us, 1x8192x8192 11.4 vs 14.0, 1x28672x8192 35.8 with 4 stages vs
// 43.8 for the multistage tile) while tying on H100 (44.2 vs 44.4, 14.8 vs 14.7, 46.1 vs
// 45.5-46.2; entry 21).
struct StreamingRule {
  TileChoice tile;
  double max_tiles_per_sm;            // the rule holds up to this many tiles per SM ...
  double min_tiles_per_sm = 0.0;      // ... and above this many
  long long max_elements_m16 = std::numeric_limits<long long>::max();  // n * k limit at m > 8
};
constexpr StreamingRule kStreamingRules[] = {
    // At most one 32-channel tile per SM (4096-wide layers and narrower): 16 warps along k, so the math left
    // after the last bytes land (the call's tail) halves. 1x4096x11008 11.0 vs 11.9 us for 8 warps,
    // 8x4096x4096 6.1 vs 6.4, 16x4096x11008 12.1 vs 13.4; deeper rings (4-5 stages) gained nothing
    // on H100 (on H200 1x4096x4096 4.8 vs 5.0 us with 5 stages). At m = 9..16 only up to 8192 x
    // 11008 weights, like the 8-warp tile below (longer k was not measured with this one).
    {{8, 8, 32, 1, 1, 16, 3, /*max_split_k=*/1, KernelFamily::kStreaming}, 1.0},
    {{16, 16, 32, 1, 1, 16, 3, /*max_split_k=*/1, KernelFamily::kStreaming}, 1.0, 0.0, 8192LL * 11008},
    // More than one 32-channel tile per SM, and 64-channel tiles filling 90-100% of the SMs
    // (8192-wide layers on an H100; not on narrower ones, where they would leave SMs idle, nor on
    // parts with fewer SMs, where 8192 channels make more than one per SM): 64 channels per
    // warp, 2 KB per k-block. m <= 8 with 16 warps (1x8192x8192 H100 14.8 vs 14.7 for the 32-channel tile, H200
    // 11.4 vs 14.0); m = 9..16 with 8 warps and 4 stages, on any k (16x8192x8192 H100 16.1-16.4 vs
    // 17.6-17.8, H200 15.1 vs 16.7; 16x8192x28672 H100 48.6-49.1 vs 51.0-51.6 for the multistage
    // tile with split-K 4, H200 46.1 vs 45.8).
    {{8, 8, 64, 1, 1, 16, 3, /*max_split_k=*/1, KernelFamily::kStreaming}, 1.0, 0.9},
    {{16, 16, 64, 1, 1, 8, 4, /*max_split_k=*/1, KernelFamily::kStreaming}, 1.0, 0.9},
    // Up to three 32-channel tiles per SM (11008-wide layers), 8 warps along k, three blocks per
    // SM: 1x11008x4096 11.0 us (4 stages) against 12.7 for 64 channels per warp (which fit two
    // per SM). At m <= 8 a ring of 3 stages, not 4: fewer bytes in flight, yet faster on H100 (1x11008x4096
    // 10.6 vs 10.9 us, 1x11008x8192 19.3 vs 19.9, 1x12288x4096 11.1 vs 11.4) and level on H200
    // (within 0.1-0.2 us from 6144 to 12288 channels; bench/NOTES.md, entry 22). At m = 9..16 (two
    // 8-row fragments per warp) 4 stages, and only up to 8192 x 11008 weights: beyond that the
    // multistage tile was ahead (8192x28672, 4%) before the rule above took that layer.
    {{8, 8, 32, 1, 1, 8, 3, /*max_split_k=*/1, KernelFamily::kStreaming}, 3.0},
    {{16, 16, 32, 1, 1, 8, 4, /*max_split_k=*/1, KernelFamily::kStreaming}, 3.0, 0.0, 8192LL * 11008},
    // The largest layers, m <= 8: 2 to 3.5 64-channel tiles per SM (28672-wide on an H100 or
    // H200), i.e. 1 to 1.75 tiles of 128 channels: two 64-channel warps side by side, 4 along
    // k (8 warps, a ring of 3 stages). The 64-channel tiles were measured first: 8 warps along k,
    // H100 46.1 us (4 stages) against 45.5-46.2 for the multistage 128-channel tile, H200 35.8 vs
    // 43.8 (entry 21); 3 stages rather than 4 (fewer bytes in flight), H100 45.2 vs 46.2 us at
    // m = 1 and 46.2 vs 47.4 at m = 8 (entry 22). On H200 the 128-channel tile, found by
    // profile(), beats that one in two interleaved rounds: 1x28672x8192 35.8 / 36.2 vs 36.6 / 36.9
    // us, 8x28672x8192 34.6 / 34.4 vs 36.6 / 36.6 (bench/NOTES.md, entry 34; half the blocks, each
    // warp twice the k range: fewer ring fills and in-block reductions per byte). Not measured on
    // H100. Only that layer was measured: narrower ones (12672 to 16896 channels on an H100) and
    // wider ones (vocabulary heads, 32000 and up) keep the multistage tiles.
    {{8, 8, 128, 1, 2, 4, 3, /*max_split_k=*/1, KernelFamily::kStreaming}, 1.75, 1.0},
};

// Split-K: fp32 partials + a reducing kernel, until the grid has the tile's target_blocks_per_sm.
// The mid-sized decode rule below uses the mma.sync target.
constexpr double kTargetBlocksPerSm = 1.5;

// The tile's config without split-K (what is_available can look up).
KernelConfig config_of(const TileChoice& tile) {
  KernelConfig config;
  config.family = tile.family;
  config.tile_m = tile.tile_m;
  config.tile_n = tile.tile_n;
  config.warps_m = tile.warps_m;
  config.warps_n = tile.warps_n;
  config.warps_k = tile.warps_k;
  config.stages = tile.stages;
  return config;
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

  const bool warp_specialized =
      device.sm_version == 90 && is_available(config_of(kWarpSpecializedTable[std::size(kWarpSpecializedTable) - 1]));
  const int dequant_min_m = warp_specialized ? kDequantCublasMinM_WarpSpecialized : kDequantCublasMinM_Sm90;
  if (device.sm_version >= 90 && m >= dequant_min_m && is_available(dequant)) return dequant;

  const TileChoice* table_tile = &kTileTable[0];
  while (m > table_tile->max_m) ++table_tile;  // the last entry's max_m is INT_MAX: always stops
  const TileChoice* warp_specialized_tile = &kWarpSpecializedTable[0];
  while (m > warp_specialized_tile->max_m) ++warp_specialized_tile;
  // Small layers up to m = 32: even split 8 ways, a 128-channel tile leaves each warp only 4
  // k-blocks; 16- or 32-channel tiles with the warps along k fill the GPU without split-K.
  const bool small_layer = m <= kSmallLayerTileM16.max_m && static_cast<long long>(n) * k <= kSmallLayerElements;
  const TileChoice* const small_layer_tile = m <= kSmallLayerTile.max_m ? &kSmallLayerTile : &kSmallLayerTileM16;
  const long long wide_k_blocks = (static_cast<long long>(n) + kWideKDecodeTile.tile_n - 1) / kWideKDecodeTile.tile_n;
  const bool wide_k = m <= 8 && !small_layer && wide_k_blocks >= kWideKMinBlocksPerSm * device.sm_count &&
                      wide_k_blocks < kTargetBlocksPerSm * device.sm_count;
  // The first decode rule that holds (see kStreamingRules), or none.
  const TileChoice* streaming_tile = nullptr;
  for (const StreamingRule& rule : kStreamingRules) {
    const TileChoice& tile = rule.tile;
    if (m > tile.max_m || (m > 8 && static_cast<long long>(n) * k > rule.max_elements_m16)) continue;
    if (m <= 8 && tile.max_m > 8) continue;  // an m <= 8 problem takes the 8-row tiles
    const double tiles_per_sm = static_cast<double>(n) / tile.tile_n / device.sm_count;
    if (tiles_per_sm > rule.max_tiles_per_sm || tiles_per_sm <= rule.min_tiles_per_sm) continue;
    if (!is_available(config_of(tile))) continue;
    streaming_tile = &tile;
    break;
  }
  const TileChoice* const first = warp_specialized && m >= kWarpSpecializedMinM ? warp_specialized_tile
                                  : streaming_tile != nullptr  ? streaming_tile
                                  : small_layer                ? small_layer_tile
                                  : wide_k                     ? &kWideKDecodeTile
                                                               : table_tile;
  // Output tiles of the problem for a tile shape.
  auto tiles_of = [&](const TileChoice& tile) {
    return ((static_cast<long long>(m) + tile.tile_m - 1) / tile.tile_m) *
           ((static_cast<long long>(n) + tile.tile_n - 1) / tile.tile_n);
  };
  // The tile's config with its split-K factor: the smallest that gives the grid the tile's
  // target_blocks_per_sm (and slices of at most max_k_blocks_per_split), within its limits.
  auto with_split = [&](const TileChoice& tile) {
    KernelConfig config = config_of(tile);
    const long long tiles = tiles_of(tile);
    const int k_blocks = k / 64;
    config.split_k = 1;
    for (int split : split_k_choices()) {
      if (split > tile.max_split_k || k_blocks / (split * tile.warps_k) < tile.min_k_blocks_per_warp) break;
      config.split_k = split;
      if (tiles * split >= tile.target_blocks_per_sm * device.sm_count && k_blocks / split <= tile.max_k_blocks_per_split) {
        break;
      }
    }
    return config;
  };

  if (warp_specialized && first == warp_specialized_tile && m > kWarpSpecializedTable[1].max_m) {
    // One block per SM.
    const double waves = static_cast<double>(tiles_of(kWarpSpecializedWideTile)) / device.sm_count;
    const KernelConfig wide = config_of(kWarpSpecializedWideTile);
    if (waves / std::ceil(waves) >= kWideTileMinWaveUse && is_available(wide)) return wide;
  }

  const TileChoice* const candidates[] = {first, table_tile};
  for (const TileChoice* tile : candidates) {
    KernelConfig config = with_split(*tile);
    // Up to m = 128 on small layers, the 128-row warp-specialized tile needs split-K 4 or more to
    // fill the GPU, and its fp32 partials then cost about as much as the weights; two 64-row
    // tiles need half the split (128x4096x4096: ws_m64 k2 13.7 us, ws_m128 k4 15.0, cuBLAS 14.6;
    // bench/NOTES.md, entry 19).
    if (tile == warp_specialized_tile && tile->tile_m == 128 && m <= 128 && config.split_k >= 4) {
      const KernelConfig smaller = with_split(kWarpSpecializedTable[1]);
      if (smaller.split_k < config.split_k && is_available(smaller)) return smaller;
    }
    if (is_available(config)) return config;
  }
  return dequant;
}

// The grouped launch's tile. The host cannot see the routing, only its size: `rows` rows over at
// most min(experts, rows) experts, so rows per routed expert are at least rows / min(experts,
// rows) on average, and the tile is picked by that with room to spare: routing is uneven, and an
// expert with one row more than the tile gets a second m-tile. Each routed expert has a full pass
// over its n-tiles, so even decode grids are routed-experts times larger than a dense call's and
// never need split-K. From `w4a16 bench --moe` on the H200 (bench/NOTES.md, entry 28):
//   <= 4 rows per expert, on layers of k >= 4096 or calls of at most 8 rows: the 8-row streaming
//     tile of 64 channels. An expert with 9-16 rows then takes two m-tiles, but they are adjacent
//     in the band order and the second reads the weights from L2: Mixtral at 16 tokens (4 rows
//     per expert) ran 89.3 / 67.3 us this way, 101.0 / 87.1 with ws_m32n128 and 153.8 / 102.4
//     with the 16-row streaming tile. On short-k experts (the 128-expert set's 2048 and 1536) a
//     streaming block holds only 64-96 KB of weights, mostly ramp-up and drain, and the wgmma
//     tile's TMA slots do better from 16 tokens on (16 tokens: 69.1 vs 88.2 us, 64: 102.6 vs
//     135.1), though not for one token (10.2-11.4 vs 9.2-9.5). 64 channels rather than 32 at
//     one token: 20.9 vs 22.3 us (4096x14336), 9.5 vs 11.6 (2048x1536), 9.5 vs 9.2 (1536x2048).
//   sm_90 with the warp-specialized grouped tiles: <= 24 rows -> ws_m32n128, <= 48 -> ws_m64n128,
//     <= 128 -> ws_m128n128, above -> ws_m128n256 (each activation tile feeds twice the
//     weights; the dense rule's wave condition holds easily with several experts' tiles).
//   Elsewhere: the 16-row streaming tiles up to 8 rows, then the multistage table's tile for
//     twice the average.
KernelConfig choose_grouped(int rows, int experts, int n, int k, const DeviceTraits& device,
                            const std::vector<KernelConfig>& available) {
  (void)n;
  const long long routed = std::max(1LL, std::min<long long>(experts, rows));
  const long long rows_per_expert = (std::max(rows, 1) + routed - 1) / routed;
  auto is_available = [&](const KernelConfig& config) {
    return std::find(available.begin(), available.end(), config) != available.end();
  };
  std::vector<TileChoice> choices;
  const bool hopper = device.sm_version == 90;
  const bool streaming_pays = !hopper || k >= 4096 || rows <= 8;
  if ((rows_per_expert <= 4 && streaming_pays) || (!hopper && rows_per_expert <= 8)) {
    const int tile_m = rows_per_expert <= 4 ? 8 : 16;
    const int stages = tile_m == 8 ? 3 : 4;
    choices.push_back({tile_m, tile_m, 64, 1, 1, 8, stages, 1, KernelFamily::kStreaming});
    choices.push_back({tile_m, tile_m, 32, 1, 1, 8, stages, 1, KernelFamily::kStreaming});
  }
  if (hopper) {
    choices.push_back(rows_per_expert <= 24   ? kWarpSpecializedTable[0]
                      : rows_per_expert <= 48 ? kWarpSpecializedTable[1]
                      : rows_per_expert <= 128 ? kWarpSpecializedTable[2]
                                               : kWarpSpecializedWideTile);
    if (rows_per_expert > 128) choices.push_back(kWarpSpecializedTable[2]);
  }
  const TileChoice* table_tile = &kTileTable[0];
  while (2 * rows_per_expert > table_tile->max_m) ++table_tile;
  choices.push_back(*table_tile);
  for (const TileChoice& choice : choices) {
    const KernelConfig config = config_of(choice);
    if (is_available(config)) return config;
  }
  return available.empty() ? KernelConfig{} : available.front();
}

LaunchOverlap launch_overlap(KernelFamily family, long long blocks, int resident_blocks_per_sm, int sm_count) {
  // A programmatic launch's blocks are placed as soon as the previous kernel triggers, into
  // whatever block slots are free then. A grid that fills the GPU's slots (at most half a free
  // slot per SM) cannot be placed badly; a smaller one got several blocks crowded onto the SMs the
  // previous kernel freed first and ran up to 20% slower, except streaming grids of at most one
  // block per SM, which gained. Same-binary A/B on H100 (bench/NOTES.md, entry 20, with the
  // 8-warp 32-channel streaming tiles these shapes used then): 16x4096x4096 (128 streaming blocks)
  // 6.8 vs 8.2 us programmatic vs not; 1x8192x28672 (256 streaming blocks, three fit per SM) 50.2
  // vs 45.6; 32x11008x4096 (86 warp-specialized blocks, two fit) 19.5 vs
  // 16.2; grids that fill the GPU gained or tied.
  //
  // The same test decides whether a streaming grid lets its successor launch at its entry: the
  // successor's early blocks then only get the few slots this grid leaves (1x11008x4096: 11.1 vs
  // 12.5 us, measured while the streaming prologue still prefetched its weights), where a grid
  // leaving many free had them crowd in (forced three-per-SM tile at 1x4096x4096: 9.0 vs 6.1).
  const bool streaming = family == KernelFamily::kStreaming;
  const bool known = resident_blocks_per_sm > 0 && sm_count > 0;
  const bool fills_the_gpu =
      known && static_cast<long long>(sm_count) * resident_blocks_per_sm - blocks <= sm_count / 2;
  LaunchOverlap overlap;
  overlap.programmatic_helps = fills_the_gpu || (known && streaming && blocks <= sm_count);
  overlap.launch_dependents_at_entry = streaming && fills_the_gpu;
  return overlap;
}

}  // namespace w4a16::heuristics
