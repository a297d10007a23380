#pragma once
// The multistage mainloop (KernelFamily::kMultistage): cp.async copies stage after stage of
// weights, activations and group rows (scales, and zero points) into a ring of shared-memory
// buffers while the warps dequantize and multiply the oldest one with mma.sync.
//
// Operand roles: the weights are the mma's A operand (16 output channels x 16 k) and the
// activations its B operand (16 k x 8 rows of A). Putting the weights on the 16-row side means no
// mma rows are wasted at m <= 8 (decode), and one packed word per lane is exactly one A fragment.
//
// At decode sizes this loop is bound by instruction issue, not by bandwidth, unless it is lean:
// every copy address and every shared-memory offset a lane reads from is computed once (CopyPlan,
// LaneOffsets) and then advanced by a constant per stage (scale sources by their group row), and
// scales are read from shared memory once per k-block rather than per fragment. About 180
// instructions per warp per 1 KB k-block of weights at decode (~260 before; bench/NOTES.md, 9).

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
struct MultistageMainloop {
  using Tile = TileT;
  using Format = FormatT;
  using Operands = StageOperands<Tile>;
  using LaneOffsets = typename Operands::LaneOffsets;
  static __device__ __forceinline__ int swizzled_offset(int row, int chunk) { return Operands::swizzled_offset(row, chunk); }
  using E = typename Format::E;
  using Scalar = typename Format::Scalar;
  using Dequant = typename Format::Dequant;
  static constexpr KernelFamily kFamily = KernelFamily::kMultistage;
  using Accumulators = float[Tile::kFragmentsN][Tile::kFragmentsM][4];

  // Shared memory: Stages buffers of WarpsK slots; a slot holds one k-block: (TileN / 16) packed
  // weight tiles of 512 bytes, TileM activation rows of 128 bytes (swizzled, see swizzled_offset),
  // then per group array (scales; zero points too with either zero-point op) two rows of TileN values:
  // group 32 splits a 64-wide k-block into two groups, every other supported group size (64, 128,
  // k) covers it with one. Every region is a multiple of 16 bytes, so every cp.async destination
  // stays aligned.
  static constexpr int kGroupRowBytes = Tile::kTileN * 2;
  static constexpr int kGroupArrayBytes = 2 * kGroupRowBytes;
  static constexpr int kGroupOffset = Tile::kWeightBytes + Tile::kActivationBytes;
  static constexpr int kSlotBytes = (kGroupOffset + Format::kGroupArrays * kGroupArrayBytes + 15) / 16 * 16;
  static constexpr int kStageBytes = Tile::kWarpsK * kSlotBytes;
  static constexpr int kPipelineBytes = Tile::kStages * kStageBytes;
  // The in-block split-K reduction reuses the pipeline's shared memory after the last stage.
  static constexpr int kSharedBytes =
      kPipelineBytes > reduction_bytes<Tile>() ? kPipelineBytes : reduction_bytes<Tile>();
  static constexpr int kBlockThreads = Tile::kThreads;
  static constexpr int kMinBlocksPerSM = 1;
  static constexpr int kKBlocksPerUnit = 1;  // split-K deals out single k-blocks

  // Which 16-byte chunks of a stage this thread copies, fixed for the whole k loop. At decode sizes
  // the loop is bound by instruction issue, so a copy must cost little more than the cp.async
  // itself: each destination is a shared-space address in buffer 0 (a stage adds its buffer's
  // offset), each weight and activation source is a running pointer advanced by one stage's k
  // extent per issue (stages are issued exactly once each, in order), and "is this chunk copied in
  // this stage" is one compare of the chunk's slot against the stage's number of valid slots.
  // Chunks hanging over the m or n edge get slot kNever and are never copied: the rows they would
  // feed are outputs the epilogue does not store (an mma output row depends only on its own
  // operand row), so whatever stale data sits there is harmless and no zero-fill is needed.
  struct CopyPlan {
    static constexpr int kWeightChunks = Tile::kWarpsK * Tile::kWeightBytes / 16;
    static constexpr int kActivationChunks = Tile::kWarpsK * Tile::kTileM * 8;
    // 16-byte chunks of group rows: WarpsK slots x group arrays x 2 rows x TileN / 8.
    static constexpr int kScaleChunks = Tile::kWarpsK * Format::kGroupArrays * 2 * (Tile::kTileN / 8);
    static constexpr int kWeightCopies = (kWeightChunks + Tile::kThreads - 1) / Tile::kThreads;
    static constexpr int kActivationCopies = (kActivationChunks + Tile::kThreads - 1) / Tile::kThreads;
    static constexpr int kScaleCopies = (kScaleChunks + Tile::kThreads - 1) / Tile::kThreads;
    static constexpr int kNever = 1 << 30;

    const uint8_t* weight_source[kWeightCopies];
    uint32_t weight_destination[kWeightCopies];
    int weight_slot[kWeightCopies];
    const Scalar* activation_source[kActivationCopies];
    uint32_t activation_destination[kActivationCopies];
    int activation_slot[kActivationCopies];
    const Scalar* scale_source[kScaleCopies];  // the channel's column of scales or zeros; the row is chosen per stage
    uint32_t scale_destination[kScaleCopies];
    int scale_slot[kScaleCopies];
    int scale_row[kScaleCopies];  // 0, or 1 for the second group of a k-block (group 32 only)

    __device__ __forceinline__ CopyPlan(const Params& params, const TileWork& work, uint32_t shared_base) {
      const int thread = threadIdx.x;
      const uint8_t* packed = static_cast<const uint8_t*>(params.packed_weights);
      constexpr int kWeightChunksPerSlot = Tile::kWeightBytes / 16;
      #pragma unroll
      for (int i = 0; i < kWeightCopies; ++i) {
        const int chunk = thread + i * Tile::kThreads;
        const int slot = chunk / kWeightChunksPerSlot, in_slot = chunk % kWeightChunksPerSlot;
        const int row_block = work.n_begin / layout::kTileRows + in_slot / 32;
        const bool valid = chunk < kWeightChunks && row_block < params.n / layout::kTileRows;
        weight_slot[i] = valid ? slot : kNever;
        weight_destination[i] = shared_base + slot * kSlotBytes + in_slot * 16;
        weight_source[i] = packed + layout::tile_offset_bytes(row_block, work.k_block_begin + slot, params.k) +
                           (in_slot % 32) * 16;
      }
      constexpr int kActivationChunksPerSlot = Tile::kTileM * 8;
      #pragma unroll
      for (int i = 0; i < kActivationCopies; ++i) {
        const int chunk = thread + i * Tile::kThreads;
        const int slot = chunk / kActivationChunksPerSlot, in_slot = chunk % kActivationChunksPerSlot;
        const int row = in_slot / 8, column_chunk = in_slot % 8;
        const bool valid = chunk < kActivationChunks && work.m_begin + row < params.m;
        activation_slot[i] = valid ? slot : kNever;
        activation_destination[i] =
            shared_base + slot * kSlotBytes + Tile::kWeightBytes + swizzled_offset(row, column_chunk);
        activation_source[i] = static_cast<const Scalar*>(params.a) + static_cast<long long>(work.m_begin + row) * params.k +
                               static_cast<long long>(work.k_block_begin + slot) * Tile::kBlockK + column_chunk * 8;
      }
      constexpr int kScaleChunksPerRow = Tile::kTileN / 8;
      constexpr int kScaleChunksPerArray = 2 * kScaleChunksPerRow;
      constexpr int kScaleChunksPerSlot = Format::kGroupArrays * kScaleChunksPerArray;
      const bool two_groups = params.group_size == 32;
      #pragma unroll
      for (int i = 0; i < kScaleCopies; ++i) {
        const int chunk = thread + i * Tile::kThreads;
        const int slot = chunk / kScaleChunksPerSlot, in_slot = chunk % kScaleChunksPerSlot;
        const int array = in_slot / kScaleChunksPerArray, in_array = in_slot % kScaleChunksPerArray;
        const int row = in_array / kScaleChunksPerRow, column_chunk = in_array % kScaleChunksPerRow;
        const int channel = work.n_begin + column_chunk * 8;
        const bool valid = chunk < kScaleChunks && channel < params.n && (row == 0 || two_groups);
        scale_slot[i] = valid ? slot : kNever;
        scale_row[i] = row;
        scale_destination[i] = shared_base + slot * kSlotBytes + kGroupOffset + array * kGroupArrayBytes +
                               row * kGroupRowBytes + column_chunk * 16;
        scale_source[i] = static_cast<const Scalar*>(array == 0 ? params.scales : params.zeros) + channel;
      }
    }

    // Issues the weight and scale copies of the next stage, whose first k-block is `first_block`
    // and which has `slots` (1..WarpsK) k-blocks before the end of this block's k range, into the
    // buffer at byte offset `buffer`.
    __device__ __forceinline__ void issue_weights_and_scales(const Params& params, uint32_t buffer, int first_block,
                                                             int slots) {
      #pragma unroll
      for (int i = 0; i < kWeightCopies; ++i) {
        if (weight_slot[i] < slots) ptx::cp_async_16(weight_destination[i] + buffer, weight_source[i]);
        weight_source[i] += Tile::kWarpsK * layout::kTileBytes;
      }
      #pragma unroll
      for (int i = 0; i < kScaleCopies; ++i) {
        if (scale_slot[i] < slots) {
          // Group of the block's first column (or its second half, for group 32); see
          // Params::group_shift.
          const int group = (((first_block + scale_slot[i]) * Tile::kBlockK) >> params.group_shift) + scale_row[i];
          ptx::cp_async_16(scale_destination[i] + buffer, scale_source[i] + static_cast<long long>(group) * params.n);
        }
      }
    }

    __device__ __forceinline__ void issue_activations(uint32_t buffer, int slots) {
      #pragma unroll
      for (int i = 0; i < kActivationCopies; ++i) {
        if (activation_slot[i] < slots) ptx::cp_async_16(activation_destination[i] + buffer, activation_source[i]);
        activation_source[i] += Tile::kWarpsK * Tile::kBlockK;
      }
    }
  };

  // Where the group scale is applied. Decode tiles (at most two 8-row fragments per warp) feed each
  // dequantized weight fragment to only one or two mma, so scaling the fragment (4 hmul2 per 16x16
  // weights) costs more than scaling a partial sum once per group (4 ffma per 8-row fragment): the
  // codes go into the mma as exact small integers, the products accumulate in fp32 per group, and
  // the scale multiplies that sum. It is also the more accurate order (no 16-bit rounding of w).
  // Wider tiles reuse each fragment across 4-16 mma, where scaling the fragment is cheaper.
  static constexpr bool kScaleAfterMma = Tile::kFragmentsM <= 2;

  // Multiplies one k-block (one slot of a stage) into the accumulators.
  // `slot` points at the slot in shared memory (generic pointer, for the plain loads) and
  // `slot_address` is the same place as a shared-space address (for ldmatrix).
  // The mma.sync math step: weights dequantized from shared memory, activations via ldmatrix.
  static __device__ __forceinline__ void compute_slot(const uint8_t* slot, uint32_t slot_address, bool two_groups,
                                                      const LaneOffsets& lane_offsets, Accumulators& accumulators) {
    const uint32_t activations = slot_address + Tile::kWeightBytes;
    const uint8_t* scales = slot + kGroupOffset + lane_offsets.scales;
    // Each lane's 16 packed bytes of each of its weight tiles: four words = four 16-wide k slices.
    uint4 packed[Tile::kFragmentsN];
    #pragma unroll
    for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
      packed[fragment_n] =
          *reinterpret_cast<const uint4*>(slot + lane_offsets.weights + fragment_n * layout::kTileBytes);
    }
    // Scale (array 0) or zero point (array 1) of channel r (low) and r + 8 (high) of fragment n in
    // group row `row` (0, or 1 for the second group of a k-block when group = 32).
    auto group_value = [&](int array, int row, int fragment_n, bool high) {
      return *reinterpret_cast<const Scalar*>(scales + array * kGroupArrayBytes + row * kGroupRowBytes +
                                              (fragment_n * 16 + (high ? 8 : 0)) * 2);
    };
    auto scale = [&](int row, int fragment_n, bool high) { return group_value(0, row, fragment_n, high); };
    // Zero points (either zero-point op; the symmetric op never reads array 1).
    auto zero = [&](int row, int fragment_n, bool high) {
      return Format::kZeros ? group_value(1, row, fragment_n, high) : scale(row, fragment_n, high);
    };

    if constexpr (kScaleAfterMma) {
      float partial[Tile::kFragmentsN][Tile::kFragmentsM][4];
      // Float zero points: the group's activation sums (the all-ones mma, common/dequant.cuh).
      float sums[Tile::kFragmentsM][4];
      // Whole-number zero points: the group's unpack offsets of each fragment's channels.
      typename Dequant::CodeOffsets offsets[Tile::kFragmentsN] = {};
      auto load_offsets = [&](int row) {
        #pragma unroll
        for (int n = 0; n < Tile::kFragmentsN; ++n) offsets[n] = Dequant::offsets(zero(row, n, false), zero(row, n, true));
      };
      auto clear = [&] {
        #pragma unroll
        for (int m = 0; m < Tile::kFragmentsM; ++m) {
          #pragma unroll
          for (int n = 0; n < Tile::kFragmentsN; ++n)
            #pragma unroll
            for (int i = 0; i < 4; ++i) partial[n][m][i] = 0.0f;
          #pragma unroll
          for (int i = 0; i < 4; ++i) sums[m][i] = 0.0f;
        }
      };
      auto fold = [&](int row) {  // accumulators += partial * s (- sums * z s)
        #pragma unroll
        for (int n = 0; n < Tile::kFragmentsN; ++n) {
          #pragma unroll
          for (int m = 0; m < Tile::kFragmentsM; ++m) {
            Dequant::fold(accumulators[n][m], partial[n][m], sums[m], scale(row, n, false), scale(row, n, true),
                          zero(row, n, false), zero(row, n, true));
          }
        }
      };
      clear();
      if constexpr (Dequant::kFoldedZeros) load_offsets(0);
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) {
          fold(0);
          clear();
          if constexpr (Dequant::kFoldedZeros) load_offsets(1);
        }
        uint32_t activation[Tile::kFragmentsM][2];
        Operands::load_activations(activations, lane_offsets, k_slice, activation);
        if constexpr (Dequant::kActivationSums) {
          uint32_t ones[4];
          ones_fragment<E>(ones);
          #pragma unroll
          for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
            E::mma_m16n8k16(sums[fragment_m], ones, activation[fragment_m]);
          }
        }
        #pragma unroll
        for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
          uint32_t codes[4];
          Dequant::codes(Operands::word_of(packed[fragment_n], k_slice), offsets[fragment_n], codes);
          #pragma unroll
          for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
            E::mma_m16n8k16(partial[fragment_n][fragment_m], codes, activation[fragment_m]);
          }
        }
      }
      fold(two_groups ? 1 : 0);
    } else {
      typename Dequant::GroupTerms terms[Tile::kFragmentsN];
      auto load_scales = [&](int row) {
        #pragma unroll
        for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
          terms[fragment_n] = Dequant::terms(scale(row, fragment_n, false), scale(row, fragment_n, true),
                                             zero(row, fragment_n, false), zero(row, fragment_n, true));
        }
      };
      load_scales(0);
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) load_scales(1);
        uint32_t activation[Tile::kFragmentsM][2];
        Operands::load_activations(activations, lane_offsets, k_slice, activation);
        #pragma unroll
        for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
          uint32_t weights[4];
          Dequant::weights(Operands::word_of(packed[fragment_n], k_slice), terms[fragment_n], weights);
          #pragma unroll
          for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
            E::mma_m16n8k16(accumulators[fragment_n][fragment_m], weights, activation[fragment_m]);
          }
        }
      }
    }
  }

  // The pipeline. Stage i covers k-blocks k_block_begin + i * WarpsK ... (+ WarpsK - 1) and lives in ring
  // buffer i % Stages. A buffer is refilled one stage after it was computed on (the warps are done
  // with it when they reach the next barrier), so Stages - 1 stages are in flight. Invariant at
  // the top of iteration i: stages i .. i + Stages - 2 have been issued, one commit group each
  // (empty groups past the end keep the count uniform), so waiting until at most Stages - 2
  // groups are pending means stage i has landed.
  static constexpr int kInFlight = Tile::kStages - 1;
  static_assert(kInFlight >= 1, "the pipeline needs a stage in flight");

  static __device__ __forceinline__ void run(const Params& params, const TileWork& work, uint8_t* shared, int warp_m,
                                             int warp_n, int warp_k, Accumulators& accumulators) {
    #pragma unroll
    for (int n = 0; n < Tile::kFragmentsN; ++n)
      #pragma unroll
      for (int m = 0; m < Tile::kFragmentsM; ++m)
        #pragma unroll
        for (int i = 0; i < 4; ++i) accumulators[n][m][i] = 0.0f;

    const uint32_t shared_base = ptx::shared_address(shared);
    CopyPlan plan(params, work, shared_base);
    const LaneOffsets lane_offsets(warp_m, warp_n);
    // Mainloop iterations: one per stage's worth (WarpsK k-blocks) of this block's k range.
    const int iterations = (work.k_block_end - work.k_block_begin + Tile::kWarpsK - 1) / Tile::kWarpsK;
    auto slots_of = [&](int stage) { return min(Tile::kWarpsK, work.k_block_end - work.k_block_begin - stage * Tile::kWarpsK); };
    // Prologue. Before waiting for the previous kernel in the stream (programmatic dependent
    // launch) nothing is read: when launched programmatically, thread r asks L2 for row block r's
    // weights of the first kInFlight stages (one contiguous run per row block, packed_layout.h),
    // so that at decode sizes the HBM latency of the first copies overlaps the previous kernel's
    // tail. After the wait the first stages are copied as any other, their weights mostly out of L2.
    {
      const int k_blocks = work.k_block_end - work.k_block_begin;
      const int row_block = work.n_begin / layout::kTileRows + static_cast<int>(threadIdx.x);
      if (params.programmatic && threadIdx.x < Tile::kTileN / layout::kTileRows &&
          row_block < params.n / layout::kTileRows && k_blocks > 0) {
        const uint32_t bytes = static_cast<uint32_t>(min(k_blocks, kInFlight * Tile::kWarpsK)) * layout::kTileBytes;
        ptx::prefetch_l2_bulk(static_cast<const uint8_t*>(params.packed_weights) +
                                  layout::tile_offset_bytes(row_block, work.k_block_begin, params.k),
                              bytes);
      }
    }
    ptx::grid_dependency_wait();
    #pragma unroll
    for (int s = 0; s < kInFlight; ++s) {
      if (s < iterations) {
        plan.issue_weights_and_scales(params, s * kStageBytes, work.k_block_begin + s * Tile::kWarpsK, slots_of(s));
        plan.issue_activations(s * kStageBytes, slots_of(s));
      }
      ptx::cp_async_commit();
    }

    const bool two_groups = params.group_size == 32;
    // Byte offsets of the buffer computed on (stage i) and the one refilled (stage i + kInFlight),
    // advanced with a wrap instead of a modulo per iteration.
    auto advance = [](int offset) {
      return offset + kStageBytes == kPipelineBytes ? 0 : offset + kStageBytes;
    };
    int read_buffer = 0, write_buffer = kInFlight * kStageBytes;
    const int slot_bytes = warp_k * kSlotBytes;
    // One iteration: wait for stage i, refill the buffer freed one stage ago, compute.
    for (int i = 0; i < iterations; ++i) {
      ptx::cp_async_wait<kInFlight - 1>();
      // Makes stage i visible to every warp, and guarantees every warp is done with the buffer the
      // next copy overwrites (it finished stage i - 1 before arriving here).
      __syncthreads();
      const int next = i + kInFlight;
      if (next < iterations) {
        plan.issue_weights_and_scales(params, write_buffer, work.k_block_begin + next * Tile::kWarpsK, slots_of(next));
        plan.issue_activations(write_buffer, slots_of(next));
      }
      ptx::cp_async_commit();
      if (warp_k < slots_of(i)) {
        const int offset = read_buffer + slot_bytes;
        compute_slot(shared + offset, shared_base + offset, two_groups, lane_offsets, accumulators);
      }
      read_buffer = advance(read_buffer);
      write_buffer = advance(write_buffer);
    }
    ptx::cp_async_wait<0>();
  }
};

}  // namespace w4a16::fused
