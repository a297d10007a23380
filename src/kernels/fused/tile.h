#pragma once
// The shape of one fused kernel, and nothing else: TileM x TileN outputs per block, its math warps
// arranged WarpsM x WarpsN x WarpsK, and the depth of its pipeline. What a shape costs in shared
// memory and registers depends on the mainloop (and its format) and is computed there
// (multistage/, streaming/, warp_specialized/).
//
// The WarpsK warps of one (m, n) position each take their own k-blocks and are summed through
// shared memory at the end (in-block split-K, block_reduce.cuh): at decode sizes that multiplies
// the warps streaming a narrow n tile without a second kernel or a workspace.
//
// Operand roles, for every family: the weights are the mma's 16-row side (16 output channels per
// fragment), the activations its 8-column side (8 rows of A per fragment), so no mma rows are
// wasted at m <= 8 and one packed word per lane is exactly one weight fragment.

#include "common/packed_layout.h"

namespace w4a16::fused {

template <int TileM, int TileN, int WarpsM, int WarpsN, int WarpsK, int Stages>
struct Tile {
  static constexpr int kTileM = TileM;  // activation rows
  static constexpr int kTileN = TileN;  // output channels
  static constexpr int kBlockK = layout::kTileCols;  // one packed k-block: 64
  static constexpr int kWarpsM = WarpsM;
  static constexpr int kWarpsN = WarpsN;
  static constexpr int kWarpsK = WarpsK;
  static constexpr int kStages = Stages;
  static constexpr int kThreads = 32 * WarpsM * WarpsN * WarpsK;  // the math warps

  static constexpr int kWarpTileM = TileM / WarpsM;
  static constexpr int kWarpTileN = TileN / WarpsN;
  static constexpr int kFragmentsM = kWarpTileM / 8;   // 8-row activation fragments per warp
  static constexpr int kFragmentsN = kWarpTileN / 16;  // 16-row weight fragments per warp
  static_assert(kWarpTileM % 8 == 0 && kFragmentsM >= 1, "warp tile m must be a multiple of 8");
  static_assert(kWarpTileN % 16 == 0 && kFragmentsN >= 1, "warp tile n must be a multiple of 16");
  static_assert(Stages >= 2, "a pipeline needs at least two stages");

  // Bytes of one k-block of the block's operands in global memory.
  static constexpr int kWeightBytes = (TileN / layout::kTileRows) * layout::kTileBytes;
  static constexpr int kActivationRowBytes = kBlockK * 2;  // 128 bytes of 16-bit elements: 8 chunks of 16
  static constexpr int kActivationBytes = TileM * kActivationRowBytes;
  // Accumulator floats of one warp (the in-block reduction's unit).
  static constexpr int kAccumulatorsPerWarp = kFragmentsN * kFragmentsM * 4 * 32;
};

// Shared memory an SM offers a block's dynamic allocation on the parts the register caps are
// computed for (H100/H200: 228 KB per SM, 1 KB of it reserved per block). On parts with less
// (A100 164 KB, sm_86/89 100 KB) fewer blocks fit than a cap assumes, which is never unsafe.
constexpr int kSharedBytesPerSm = 228 * 1024;
constexpr int kSharedBytesReservedPerBlock = 1024;
constexpr int blocks_by_shared_memory(int shared_bytes) {
  return kSharedBytesPerSm / (shared_bytes + kSharedBytesReservedPerBlock);
}

}  // namespace w4a16::fused
