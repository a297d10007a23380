#pragma once
// The streaming mainloop (KernelFamily::kStreaming; decode, m <= 16): every warp streams its own operands through a private
// ring of shared-memory stages, so the k loop has no block barrier: warps never wait for each
// other, and the lanes of a warp only meet at a __syncwarp per k-block.
//
// Why a second decode mainloop: at m <= 16 the multistage loop (fused/multistage/mainloop.cuh)
// is bound by instruction issue and barrier waits, not by HBM. Per 1 KB k-block a warp spends
// ~170 instructions, of which only ~80 are the dequantize + mma work itself; the rest is copy
// planning for a stage shared by the whole block, the per-stage block barrier, and a
// ~550-instruction prologue, which a 4096 x 4096 layer (8 k-blocks per warp) never amortizes
// (bench/NOTES.md, entry 16).
//
// Here each warp owns 16 * FragmentsN channels and a contiguous run of k-blocks, and per k-block
// copies with cp.async into its own stage:
//   weights      lane L copies the 16 bytes at offset 16 L of each of the warp's 512-byte tiles,
//                which are exactly its own A fragments (common/packed_layout.h);
//   activations  the block's TileM rows of the k-block, 16-byte chunks spread over the lanes and
//                swizzled as in the multistage loop, read back with ldmatrix (rows past m are
//                not copied; their outputs are not stored);
//   group rows   when the k-block ends a group: the group's row of the warp's channels' scales
//                (and float zero points); whole-number zero points when it starts one, since
//                they enter the unpack of every k-block of the group (common/dequant.cuh).
// Each lane waits for its own copies (cp.async.wait_group) and a __syncwarp makes every lane's
// landed copies visible to the others (and says that every lane is done reading the stage the
// next copy overwrites). Stages - 1 k-blocks stay in flight while the warp multiplies one.
//
// The codes go into the mma as exact small integers and the group scale multiplies each group's
// fp32 partial sum once (as the multistage loop does for decode tiles; whole-number zero points
// in the unpack offsets, float ones through the group's activation sums, common/dequant.cuh);
// with contiguous k-blocks per warp that is once per group rather than once per k-block.
//
// The warps of a block that share an output position (WarpsK of them) split its k range and are
// summed through shared memory afterwards (fused/block_reduce.cuh); split-K across blocks, the
// epilogue and the tile scheduler are the fused skeleton's too.

#include <cstdint>

#include "common/packed_layout.h"
#include "kernels/common/ptx.cuh"
#include "kernels/fused/block_reduce.cuh"
#include "kernels/fused/stage_operands.cuh"
#include "kernels/fused/tile.h"
#include "kernels/fused/tile_scheduler.cuh"
#include "w4a16/runner.h"

namespace w4a16::fused {

template <class TileT, class FormatT>
struct StreamingMainloop {
  using Tile = TileT;
  using Format = FormatT;
  using E = typename Format::E;
  using Scalar = typename Format::Scalar;
  using Dequant = typename Format::Dequant;
  static constexpr KernelFamily kFamily = KernelFamily::kStreaming;
  static constexpr int kFragmentsN = Tile::kFragmentsN;
  static constexpr int kFragmentsM = Tile::kFragmentsM;
  // Ring depth in k-blocks; Stages - 1 of them are in flight while the warp multiplies one.
  // Little's law: an H100 SM needs ~30 KB in flight for its 1/132 share of 3 TB/s at ~1.3 us
  // loaded latency; 8-16 warps x (Stages - 1) x 1-2 KB of weights covers that.
  static constexpr int kStages = Tile::kStages;
  // One stage of one warp: FragmentsN weight tiles (each lane's 16 bytes at 16 L), TileM activation
  // rows of 128 bytes (swizzled as in the multistage loop), and per group array (scales; zero
  // points too) two rows (group 32 has two groups per k-block) of the warp's 16 * FragmentsN
  // channels.
  static constexpr int kActivationOffset = kFragmentsN * layout::kTileBytes;
  static constexpr int kScaleOffset = kActivationOffset + Tile::kTileM * Tile::kActivationRowBytes;
  static constexpr int kScaleRowBytes = Tile::kWarpTileN * 2;
  static constexpr int kGroupArrayBytes = 2 * kScaleRowBytes;
  static constexpr int kStageBytes = kScaleOffset + Format::kGroupArrays * kGroupArrayBytes;
  static constexpr int kWarpRingBytes = kStages * kStageBytes;
  static constexpr int kPipelineBytes = (Tile::kThreads / 32) * kWarpRingBytes;
  static constexpr int kSharedBytes =
      kPipelineBytes > reduction_bytes<Tile>() ? kPipelineBytes : reduction_bytes<Tile>();
  static constexpr int kActivationCopies = Tile::kTileM * 8 / 32;  // 16-byte chunks per lane per stage
  static constexpr int kScaleChunks = kScaleRowBytes / 16;         // per group row
  using Accumulators = float[kFragmentsN][kFragmentsM][4];
  using Operands = StageOperands<Tile>;  // the activation swizzle and ldmatrix of both mma.sync loops

  static constexpr int kBlockThreads = Tile::kThreads;
  static constexpr int kKBlocksPerUnit = 1;
  // Blocks per SM ptxas must leave registers for (__launch_bounds__' second argument). Tiles of 8
  // warps ask for as many blocks per SM as their shared memory allows (up to 3): a 70 KB tile that
  // lands at 86 registers fits only two blocks, not three, and 1x11008x4096 (344 blocks) then
  // takes two waves: 13.3 instead of 11.3 us (bench/NOTES.md, entry 16).
  static constexpr int kMinBlocksPerSM =
      Tile::kThreads != 256                          ? 1
      : blocks_by_shared_memory(kSharedBytes) < 1 ? 1
      : blocks_by_shared_memory(kSharedBytes) > 3 ? 3
                                                  : blocks_by_shared_memory(kSharedBytes);

  static_assert(Tile::kWarpsM == 1, "streaming tiles keep all of the block's rows in each warp");
  static_assert(kStages >= 2, "the ring needs a k-block in flight");
  static_assert(Tile::kTileM % 4 == 0 && 2 * Format::kGroupArrays * kScaleChunks <= 32, "copy assignment");

  static __device__ __forceinline__ void run(const Params& params, const TileWork& work, uint8_t* shared,
                                             int /*warp_m*/, int warp_n, int warp_k, Accumulators& accumulators) {
    const int lane = threadIdx.x % 32;
    const int k_blocks = params.k / layout::kTileCols;

    // This warp's k-blocks: a contiguous share of the block's range.
    const int range = work.k_block_end - work.k_block_begin;
    const int begin = work.k_block_begin + range * warp_k / Tile::kWarpsK;
    const int end = work.k_block_begin + range * (warp_k + 1) / Tile::kWarpsK;
    const int count = end - begin;

    // This warp's ring, as a shared-space address (for cp.async and ldmatrix) and as a pointer.
    const uint32_t warp_ring_address = ptx::shared_address(shared) + (threadIdx.x / 32) * kWarpRingBytes;
    const uint8_t* warp_ring = shared + (threadIdx.x / 32) * kWarpRingBytes;

    // Weights: fragment f is row block first_row_block + f; its k-block b is the 512-byte tile at
    // (row_block * k_blocks + b) * 512 (packed_layout.h). Row blocks past n are never copied:
    // their outputs are not stored, and an mma output row depends on its own weight row only.
    const int first_channel = work.n_begin + warp_n * Tile::kWarpTileN;
    const int first_row_block = first_channel / layout::kTileRows;
    const long long fragment_stride = static_cast<long long>(k_blocks) * layout::kTileBytes;
    // One running source pointer per fragment: held in a register pair each, they cost one 64-bit
    // add per k-block and no address arithmetic at the copy.
    const uint8_t* weight_source[kFragmentsN];
    #pragma unroll
    for (int f = 0; f < kFragmentsN; ++f) {
      weight_source[f] = static_cast<const uint8_t*>(params.packed_weights) + (first_row_block + f) * fragment_stride +
                         static_cast<long long>(begin) * layout::kTileBytes + lane * 16;
    }
    bool fragment_valid[kFragmentsN];
    #pragma unroll
    for (int f = 0; f < kFragmentsN; ++f) fragment_valid[f] = first_row_block + f < params.n / layout::kTileRows;

    // Activations: chunk c = L + 32 j of a stage is row c / 8, 16-byte column c % 8.
    const Scalar* activation_source[kActivationCopies];
    uint32_t activation_destination[kActivationCopies];
    bool activation_valid[kActivationCopies];
    #pragma unroll
    for (int j = 0; j < kActivationCopies; ++j) {
      const int chunk = lane + 32 * j, row = chunk / 8, column = chunk % 8;
      activation_valid[j] = work.m_begin + row < params.m;
      activation_source[j] = static_cast<const Scalar*>(params.a) + static_cast<long long>(activation_valid[j] ? work.m_begin + row : 0) * params.k +
                             static_cast<long long>(begin) * layout::kTileCols + column * 8;
      activation_destination[j] = kActivationOffset + Operands::swizzled_offset(row, column);
    }

    // Group rows: lanes 0 .. kScaleChunks - 1 copy the warp's channels of the group's scale row,
    // the next kScaleChunks lanes the following row (group 32 only: the second group of the
    // k-block); with zero points the next 2 kScaleChunks lanes do the same for the zeros. Scales
    // (and float zero points) come with the group's last k-block, where the fold reads them;
    // whole-number zero points with its first, where the unpack starts using them.
    const int scale_copy_row = (lane / kScaleChunks) % 2, scale_chunk = lane % kScaleChunks;
    const int scale_copy_array = lane / (2 * kScaleChunks);
    const bool two_groups = params.group_size == 32;
    const bool scale_copier = scale_copy_array < Format::kGroupArrays && (scale_copy_row == 0 || two_groups) &&
                              first_channel + scale_chunk * 8 < params.n;
    const uint32_t scale_destination =
        kScaleOffset + scale_copy_array * kGroupArrayBytes + scale_copy_row * kScaleRowBytes + scale_chunk * 16;

    // Group bookkeeping without divisions in the loop: a countdown of the k-blocks left in the
    // current group, one for the copies and one for the math (they run Stages - 1 k-blocks
    // apart). A group spans group / 64 k-blocks (one for groups 32 and 64; group 32 splits each
    // k-block in two), or the whole k for a per-channel group; a warp also folds at the end of
    // its range, wherever that falls in a group.
    const int blocks_per_group =
        params.group_size >= k_blocks * layout::kTileCols ? k_blocks : max(1, params.group_size / layout::kTileCols);
    const int first_group_left = blocks_per_group - begin % blocks_per_group;
    // Scale rows the copies step over at a group boundary: one, or two for group 32. Pinned: left
    // alone, ptxas recomputes this 64-bit product in every iteration.
    long long scale_row_step = static_cast<long long>(two_groups ? 2 : 1) * params.n;
    ptx::pin(scale_row_step);
    // (Without zero points, the lanes of the zero-point array never copy, but their source is
    // still formed from the null zeros pointer: harmless on the hardware, formally undefined in
    // C++. Pointing them into the scales instead changes the decode kernels' code, and measured
    // up to 2.2% slower on the default decode table, bench/NOTES.md entry 25.)
    const Scalar* scale_source = static_cast<const Scalar*>(scale_copy_array == 0 ? params.scales : params.zeros) +
                                 static_cast<long long>((begin * layout::kTileCols) >> params.group_shift) * params.n +
                                 static_cast<long long>(scale_copy_row) * params.n + first_channel + scale_chunk * 8;

    // Copy k-block `block` into the stage at byte offset `stage` of the ring; each is called once
    // per k-block, in order, because the sources (and the group countdown) advance by one k-block
    // per call. The commit ends each k-block's copies: one group per k-block (empty past the end,
    // so the count is uniform).
    int copy_group_left = first_group_left;
    auto copy_weights = [&](uint32_t stage, int block) {
      if (block < end) {
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          if (fragment_valid[f]) ptx::cp_async_16(warp_ring_address + stage + f * layout::kTileBytes + lane * 16, weight_source[f]);
        }
      }
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) weight_source[f] += layout::kTileBytes;
    };
    auto copy_rest_and_commit = [&](uint32_t stage, int block) {
      if (block < end) {
        #pragma unroll
        for (int j = 0; j < kActivationCopies; ++j) {
          if (activation_valid[j]) ptx::cp_async_16(warp_ring_address + stage + activation_destination[j], activation_source[j]);
        }
        const bool group_ends = copy_group_left == 1;
        const auto copy_group_row = [&] { ptx::cp_async_16(warp_ring_address + stage + scale_destination, scale_source); };
        if constexpr (Dequant::kFoldedZeros) {
          const bool group_starts = copy_group_left == blocks_per_group || block == begin;
          if (scale_copier && (scale_copy_array == 1 ? group_starts : group_ends || block + 1 == end)) copy_group_row();
        } else {
          if (scale_copier && (group_ends || block + 1 == end)) copy_group_row();
        }
        if (group_ends) scale_source += scale_row_step;
        copy_group_left = group_ends ? blocks_per_group : copy_group_left - 1;
      }
      ptx::cp_async_commit();
      #pragma unroll
      for (int j = 0; j < kActivationCopies; ++j) activation_source[j] += layout::kTileCols;
    };

    float partial[kFragmentsN][kFragmentsM][4];
    // Float zero points: the group's activation sums (the all-ones mma, common/dequant.cuh).
    float sums[kFragmentsM][4];
    // Whole-number zero points: the current group's unpack offsets of each fragment's channels.
    typename Dequant::CodeOffsets offsets[kFragmentsN] = {};
    auto load_offsets = [&](const uint8_t* stage, int row) {
      const Scalar* zeros =
          reinterpret_cast<const Scalar*>(stage + kScaleOffset + kGroupArrayBytes + row * kScaleRowBytes) + lane / 4;
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) offsets[f] = Dequant::offsets(zeros[16 * f], zeros[16 * f + 8]);
    };
    auto clear = [&](float (&values)[kFragmentsN][kFragmentsM][4]) {
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f)
        #pragma unroll
        for (int fm = 0; fm < kFragmentsM; ++fm)
          #pragma unroll
          for (int i = 0; i < 4; ++i) values[f][fm][i] = 0.0f;
    };
    auto clear_sums = [&] {
      #pragma unroll
      for (int fm = 0; fm < kFragmentsM; ++fm)
        #pragma unroll
        for (int i = 0; i < 4; ++i) sums[fm][i] = 0.0f;
    };
    // accumulators += partial * s (- sums * z s), s and z of channel L / 4 and L / 4 + 8 of each
    // fragment, from group row `row` of the stage.
    auto fold = [&](const uint8_t* stage, int row) {
      const Scalar* scales = reinterpret_cast<const Scalar*>(stage + kScaleOffset + row * kScaleRowBytes) + lane / 4;
      const Scalar* zeros =
          Dequant::kActivationSums
              ? reinterpret_cast<const Scalar*>(stage + kScaleOffset + kGroupArrayBytes + row * kScaleRowBytes) + lane / 4
              : scales;
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) {
        #pragma unroll
        for (int fm = 0; fm < kFragmentsM; ++fm) {
          Dequant::fold(accumulators[f][fm], partial[f][fm], sums[fm], scales[16 * f], scales[16 * f + 8],
                        zeros[16 * f], zeros[16 * f + 8]);
        }
      }
      clear(partial);
      if constexpr (Dequant::kActivationSums) clear_sums();
    };

    // The ldmatrix offsets of warp (0, 0): WarpsM is 1 and each warp's stage holds its own copy of
    // the block's activation tile from row 0, so every warp reads it as warp (0, 0) would. (The
    // weight and scale offsets are the multistage slot's and are not used here.)
    const typename Operands::LaneOffsets lane_offsets(0, 0);
    int compute_group_left = first_group_left;
    auto compute = [&](uint32_t stage, int block) {
      const uint8_t* stage_pointer = warp_ring + stage;
      uint4 packed[kFragmentsN];
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) {
        packed[f] = *reinterpret_cast<const uint4*>(stage_pointer + f * layout::kTileBytes + lane * 16);
      }
      if constexpr (Dequant::kFoldedZeros) {
        if (compute_group_left == blocks_per_group || block == begin) load_offsets(stage_pointer, 0);
      }
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) {
          fold(stage_pointer, 0);
          if constexpr (Dequant::kFoldedZeros) load_offsets(stage_pointer, 1);
        }
        uint32_t activation[kFragmentsM][2];
        Operands::load_activations(warp_ring_address + stage + kActivationOffset, lane_offsets, k_slice, activation);
        if constexpr (Dequant::kActivationSums) {
          uint32_t ones[4];
          ones_fragment<E>(ones);
          #pragma unroll
          for (int fm = 0; fm < kFragmentsM; ++fm) E::mma_m16n8k16(sums[fm], ones, activation[fm]);
        }
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          uint32_t codes[4];
          Dequant::codes(Operands::word_of(packed[f], k_slice), offsets[f], codes);
          #pragma unroll
          for (int fm = 0; fm < kFragmentsM; ++fm) E::mma_m16n8k16(partial[f][fm], codes, activation[fm]);
        }
      }
      const bool group_ends = compute_group_left == 1;
      if (two_groups) {
        fold(stage_pointer, 1);
      } else if (group_ends || block + 1 == end) {
        fold(stage_pointer, 0);
      }
      compute_group_left = group_ends ? blocks_per_group : compute_group_left - 1;
    };

    clear(accumulators);
    clear(partial);
    clear_sums();

    // Prologue. Nothing is read before waiting for the previous kernel in the stream
    // (programmatic dependent launch). Unlike the other families, no L2 prefetch of the weights
    // either, as a rule: a bulk prefetch ahead of the warp's own first copies delayed them
    // (same-binary A/B on H100, bench/NOTES.md entry 20: 1x4096x4096 5.3 us without, 5.7 with;
    // 16x11008x4096 15.0 vs 16.1). The exception is an act-order call, where the gather kernel in
    // front leaves a few microseconds of idle HBM: lane f then asks L2 for fragment f's first
    // kWarmKBlocks k-blocks (one contiguous run of the packed layout), which the copies after the
    // wait find there. 8 k-blocks (4 KB per fragment, 8-17 MB over a full decode grid) is about
    // what HBM delivers during the gather (~2-4 us at 4.5 TB/s), and well inside L2.
    if (params.warm_l2_before_wait && lane < kFragmentsN && first_row_block + lane < params.n / layout::kTileRows &&
        count > 0) {
      constexpr int kWarmKBlocks = 8;
      ptx::prefetch_l2_bulk(static_cast<const uint8_t*>(params.packed_weights) + (first_row_block + lane) * fragment_stride +
                                static_cast<long long>(begin) * layout::kTileBytes,
                            static_cast<uint32_t>(min(count, kWarmKBlocks)) * layout::kTileBytes);
    }
    ptx::grid_dependency_wait();
    #pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      copy_weights(s * kStageBytes, begin + s);
      copy_rest_and_commit(s * kStageBytes, begin + s);
    }

    // Iteration i: wait for k-block i (Stages - 2 newer groups may still be pending), __syncwarp
    // (every lane's copies visible to all; every lane done with k-block i - 1's stage), refill
    // that stage with k-block i + Stages - 1, multiply k-block i. Stage offsets advance with a
    // wrap instead of a modulo.
    //
    // The __syncwarp is also what keeps the compiler in line: the cp.async wrappers are asm
    // statements without a memory clobber and the weight and scale reads are plain loads, so it
    // is the barrier that stops those loads from moving above the wait or below the next refill.
    // It cannot be dropped even for the lane-private weights.
    uint32_t read_stage = 0, write_stage = (kStages - 1) * kStageBytes;
    auto advance = [](uint32_t offset) {
      return offset + kStageBytes == static_cast<uint32_t>(kWarpRingBytes) ? 0u : offset + kStageBytes;
    };
    for (int i = 0; i < count; ++i) {
      ptx::cp_async_wait<kStages - 2>();
      __syncwarp();
      copy_weights(write_stage, begin + i + kStages - 1);
      copy_rest_and_commit(write_stage, begin + i + kStages - 1);
      compute(read_stage, begin + i);
      read_stage = advance(read_stage);
      write_stage = advance(write_stage);
    }
    ptx::cp_async_wait<0>();
  }
};

}  // namespace w4a16::fused
