#pragma once
// Compile-time shape of one tensor_core_sm80 kernel and the shared-memory plan derived from it.

#include "common/packed_layout.h"

namespace w4a16::tensor_core_sm80 {

// TileM x TileN outputs per block; warps arranged WarpsM x WarpsN x WarpsK. The WarpsK warps of
// one (m, n) position each take their own 64-wide k-block of every stage and are summed through
// shared memory at the end (in-block split-K): at decode sizes that multiplies the warps streaming
// a narrow n tile without a second kernel or a workspace.
//
// The k loop, and with it the math step:
//  - KLoop::kMultistage: the block-wide cp.async pipeline of mainloop.cuh, mma.sync math.
//  - KLoop::kStreaming: the streaming_sm80 mainloop (decode): each warp streams its operands
//    through its own ring of Stages k-blocks in shared memory; no block barrier in the k loop.
//    WarpsM must be 1.
//  - KLoop::kWarpSpecialized: the wgmma_sm90 mainloop (kernels/wgmma_sm90/warp_specialized.cuh).
//    The math step is Hopper's wgmma (wgmma_math.cuh), one warpgroup per 64 or 128 channels; each
//    warp owns 16 or 32 channels (TileN = 16 * FragmentsN * WarpsN, WarpsN a multiple of 4) and
//    the warp tile's m is the wgmma's N. The WarpsM x WarpsN warps only compute; one more warpgroup (kProducerThreads)
//    issues TMA loads into the Stages slots, and full/empty mbarriers replace the block barrier.
//    Slots start on 1024-byte boundaries, which the 128-byte-swizzled operand layout wgmma reads
//    requires. WarpsK must be 1.
enum class KLoop { kMultistage, kStreaming, kWarpSpecialized };

template <int TileM, int TileN, int WarpsM, int WarpsN, int WarpsK, int Stages, KLoop Loop = KLoop::kMultistage>
struct Tile {
  static constexpr bool kStreaming = Loop == KLoop::kStreaming;
  static constexpr bool kWarpSpecialized = Loop == KLoop::kWarpSpecialized;
  static constexpr bool kWgmma = kWarpSpecialized;  // the math step
  static_assert(!kWarpSpecialized || WarpsK == 1, "warp specialization: no in-block split-K");
  static constexpr int kTileM = TileM;  // activation rows (the mma's 8-wide N side)
  static constexpr int kTileN = TileN;  // output channels (the mma's 16-wide M side)
  static constexpr int kBlockK = layout::kTileCols;  // one packed k-block: 64
  static constexpr int kWarpsM = WarpsM;
  static constexpr int kWarpsN = WarpsN;
  static constexpr int kWarpsK = WarpsK;
  static constexpr int kStages = Stages;
  static constexpr int kThreads = 32 * WarpsM * WarpsN * WarpsK;  // the math warps
  // Warp-specialized tiles add a producer warpgroup after the math warps.
  static constexpr int kProducerThreads = kWarpSpecialized ? 128 : 0;
  static constexpr int kBlockThreads = kThreads + kProducerThreads;

  static constexpr int kWarpTileM = TileM / WarpsM;
  static constexpr int kWarpTileN = TileN / WarpsN;
  static constexpr int kFragmentsM = kWarpTileM / 8;   // 8-row activation fragments per warp
  static constexpr int kFragmentsN = kWarpTileN / 16;  // 16-row weight fragments per warp
  static_assert(kWarpTileM % 8 == 0 && kFragmentsM >= 1, "warp tile m must be a multiple of 8");
  static_assert(kWarpTileN % 16 == 0 && kFragmentsN >= 1, "warp tile n must be a multiple of 16");
  static_assert(Stages >= 2, "a pipeline needs at least two stages");

  // A stage holds WarpsK slots; each slot has the weights, activations and scales of
  // kKBlocksPerSlot k-blocks (one; two for warp-specialized tiles).
  // Every region is a multiple of 16 bytes, so every cp.async destination stays aligned.
  static constexpr int kWeightBytes = (TileN / layout::kTileRows) * layout::kTileBytes;
  static constexpr int kActivationRowBytes = kBlockK * 2;  // 128 bytes: 8 chunks of 16
  static constexpr int kActivationBytes = TileM * kActivationRowBytes;
  // K-blocks per slot: one, except for warp-specialized tiles, whose slots hold two consecutive
  // k-blocks: every per-slot cost of that loop (barrier wait and release, stage bookkeeping, the
  // producer's TMA requests) is then paid once per 128 columns of k (see warp_specialized.cuh).
  static constexpr int kKBlocksPerSlot = kWarpSpecialized ? 2 : 1;
  // Scale rows per slot: group 32 splits a 64-wide k-block into two groups; every other supported
  // group size (64, 128, k) covers a k-block with one. So two rows per k-block at most.
  static constexpr int kScaleBytes = 2 * kKBlocksPerSlot * TileN * 2;
  static constexpr int kSlotAlignment = kWgmma ? 1024 : 16;
  static constexpr int kSlotBytes =
      (kKBlocksPerSlot * (kWeightBytes + kActivationBytes) + kScaleBytes + kSlotAlignment - 1) / kSlotAlignment *
      kSlotAlignment;
  static constexpr int kStageBytes = WarpsK * kSlotBytes;
  // Streaming tiles: a ring of Stages k-blocks per warp; one k-block holds the warp's weight tiles
  // (each lane's 16 bytes at 16 L), its TileM activation rows (swizzled as above) and two rows of
  // its channels' scales (see streaming_sm80/mainloop.cuh).
  static constexpr int kStreamingStageBytes =
      kFragmentsN * layout::kTileBytes + TileM * kActivationRowBytes + 2 * kWarpTileN * 2;
  static constexpr int kPipelineBytes =
      kStreaming ? (kThreads / 32) * Stages * kStreamingStageBytes : Stages * kStageBytes;

  // The in-block split-K reduction reuses the pipeline's shared memory after the last stage.
  static constexpr int kAccumulatorsPerWarp = kFragmentsN * kFragmentsM * 4 * 32;
  static constexpr int kReductionBytes = (WarpsK - 1) * WarpsM * WarpsN * kAccumulatorsPerWarp * 4;
  // Dynamic shared memory is only guaranteed 16-byte alignment; wgmma tiles round their base up to
  // 1024 bytes (see wgmma_sm90/warp_specialized.cuh) and reserve the slack.
  static constexpr int kBaseSlack = kWgmma ? 1024 : 0;
  // Warp-specialized tiles: a full and an empty mbarrier (8 bytes each) per stage after the slots.
  static constexpr int kBarrierBytes = kWarpSpecialized ? 2 * Stages * 8 : 0;
  static constexpr int kSharedBytes =
      (kPipelineBytes > kReductionBytes ? kPipelineBytes : kReductionBytes) + kBarrierBytes + kBaseSlack;

  // Blocks per SM ptxas must leave registers for (__launch_bounds__' second argument).
  //
  // Streaming tiles of 8 warps ask for as many blocks per SM as their shared memory allows (up
  // to 3): a 70 KB tile that lands at 86 registers fits only two blocks, not three, and
  // 1x11008x4096 (344 blocks) then takes two waves: 13.3 instead of 11.3 us (bench/NOTES.md,
  // entry 16). The count is the H100's: 228 KB of shared memory per SM, 1 KB of it reserved per
  // block. On parts with less (A100 164 KB, sm_86/89 100 KB) fewer blocks fit and the register
  // cap is stricter than it needs to be, never unsafe.
  //
  // Warp-specialized tiles: as many blocks as shared memory allows, at most two (80 registers
  // per thread at launch: enough for 64-row tiles of 16 channels per warp); 128-row tiles (64 fp32
  // accumulators per consumer thread) and tiles of 32 channels per warp (two accumulator halves)
  // ask for one block, 168 registers.
  static constexpr int kBlocksBySharedMemory = (228 * 1024) / (kSharedBytes + 1024);
  static constexpr int kMinBlocksPerSM =
      kWarpSpecialized ? (kBlocksBySharedMemory >= 2 && TileM <= 64 && kFragmentsN == 1 ? 2 : 1)
      : (kStreaming && kThreads == 256)
          ? (kBlocksBySharedMemory < 1 ? 1 : kBlocksBySharedMemory > 3 ? 3 : kBlocksBySharedMemory)
          : 1;

  static_assert(!kWgmma || (kFragmentsN <= 2 && WarpsN % 4 == 0), "wgmma: 16 or 32 channels per warp, warpgroups along n");
  static_assert(!kWgmma || (kWarpTileM == 8 || kWarpTileM == 16 || kWarpTileM == 32 || kWarpTileM == 64 ||
                           kWarpTileM == 128 || kWarpTileM == 256),
                "wgmma: the warp tile's m is the instruction's N (one of the compiled sizes)");
  static_assert(!kWgmma || kWeightBytes % 1024 == 0, "wgmma: the activation tile must start 1024-byte aligned");
};

}  // namespace w4a16::tensor_core_sm80
