#pragma once
// Compile-time shape of one tensor_core_sm80 kernel and the shared-memory plan derived from it.

#include "common/packed_layout.h"

namespace w4a16::tensor_core_sm80 {

template <int TileM, int TileN, int WarpsM, int WarpsN, int Stages>
struct Tile {
  static constexpr int kTileM = TileM;  // activation rows (the mma's 8-wide N side)
  static constexpr int kTileN = TileN;  // output channels (the mma's 16-wide M side)
  static constexpr int kTileK = layout::kTileCols;  // one packed k-block per pipeline stage
  static constexpr int kWarpsM = WarpsM;
  static constexpr int kWarpsN = WarpsN;
  static constexpr int kStages = Stages;
  static constexpr int kThreads = 32 * WarpsM * WarpsN;

  static constexpr int kWarpTileM = TileM / WarpsM;
  static constexpr int kWarpTileN = TileN / WarpsN;
  static constexpr int kFragmentsM = kWarpTileM / 8;   // 8-row activation fragments per warp
  static constexpr int kFragmentsN = kWarpTileN / 16;  // 16-row weight fragments per warp
  static_assert(kWarpTileM % 8 == 0 && kFragmentsM >= 1, "warp tile m must be a multiple of 8");
  static_assert(kWarpTileN % 16 == 0 && kFragmentsN >= 1, "warp tile n must be a multiple of 16");
  static_assert(Stages >= 2, "a pipeline needs at least two stages");

  // Shared memory per stage, each region 16-byte aligned for cp.async.
  static constexpr int kWeightBytes = (TileN / layout::kTileRows) * layout::kTileBytes;
  static constexpr int kActivationRowBytes = kTileK * 2;  // 128 bytes: 8 chunks of 16
  static constexpr int kActivationBytes = TileM * kActivationRowBytes;
  // Up to two scale rows per stage: group 32 splits a 64-wide k-block into two groups; every other
  // supported group size (64, 128, k) covers the whole block with one.
  static constexpr int kScaleBytes = 2 * TileN * 2;
  static constexpr int kStageBytes = kWeightBytes + kActivationBytes + kScaleBytes;
  static constexpr int kSharedBytes = Stages * kStageBytes;
};

}  // namespace w4a16::tensor_core_sm80
