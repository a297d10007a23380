#pragma once
// The multistage mainloop: cp.async copies stage after stage of weights, activations and scales into
// a ring of shared-memory buffers while the warps dequantize and multiply the oldest one.
//
// Operand roles: the weights are the mma's A operand (16 output channels x 16 k) and the
// activations its B operand (16 k x 8 rows of A). Putting the weights on the 16-row side means no
// mma rows are wasted at m <= 8 (decode), and one packed word per lane is exactly one A fragment.
//
// At decode sizes this loop is bound by instruction issue, not by bandwidth, unless it is lean:
// every address a thread copies from is computed once (CopyPlan) and then advanced by a constant
// per stage, and scales are read from shared memory once per k-block rather than per fragment.

#include <cstdint>

#include "common/packed_layout.h"
#include "kernels/common/dequant.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/tensor_core_sm80/tile_scheduler.cuh"

namespace w4a16::tensor_core_sm80 {

template <class Tile>
struct Mainloop {
  using Accumulators = float[Tile::kFragmentsN][Tile::kFragmentsM][4];

  struct Slot {
    const uint8_t* weights;      // (TileN / 16) packed tiles of 512 bytes
    const uint8_t* activations;  // TileM rows of 128 bytes, swizzled (see swizzled_offset)
    const __half* scales;        // two rows of TileN
  };

  static __device__ __forceinline__ int slot_offset(int stage, int slot) {
    return stage * Tile::kStageBytes + slot * Tile::kSlotBytes;
  }

  // Activation rows are 128 bytes = 8 chunks of 16 bytes. ldmatrix reads the same chunk column of 8
  // consecutive rows at once; unswizzled, those 8 addresses are 128 bytes apart and all hit the same
  // 4 banks (8-way conflict). Storing chunk c of row r at chunk position c ^ (r % 8) spreads them
  // over all 32 banks, for the cp.async writes as well as the ldmatrix reads.
  static __device__ __forceinline__ int swizzled_offset(int row, int chunk) {
    return row * Tile::kActivationRowBytes + ((chunk ^ (row & 7)) << 4);
  }

  // Which 16-byte chunks of a stage this thread copies, fixed for the whole k loop. A source is
  // stored as its address for a stage starting at k-block 0; stage s adds first_block * stride.
  // Chunks hanging over the m or n edge are never copied: the rows they would feed are outputs
  // the epilogue does not store (an mma output row depends only on its own operand row), so
  // whatever stale data sits there is harmless and no zero-fill is needed.
  struct CopyPlan {
    static constexpr int kWeightChunks = Tile::kWarpsK * Tile::kWeightBytes / 16;
    static constexpr int kActivationChunks = Tile::kWarpsK * Tile::kTileM * 8;
    static constexpr int kScaleChunks = Tile::kWarpsK * 2 * (Tile::kTileN / 8);
    static constexpr int kWeightCopies = (kWeightChunks + Tile::kThreads - 1) / Tile::kThreads;
    static constexpr int kActivationCopies = (kActivationChunks + Tile::kThreads - 1) / Tile::kThreads;
    static constexpr int kScaleCopies = (kScaleChunks + Tile::kThreads - 1) / Tile::kThreads;

    const uint8_t* weight_source[kWeightCopies];
    int weight_destination[kWeightCopies];  // byte offset in the stage, -1: nothing to copy
    int weight_slot[kWeightCopies];
    const __half* activation_source[kActivationCopies];
    int activation_destination[kActivationCopies];
    int activation_slot[kActivationCopies];
    const __half* scale_source[kScaleCopies];  // channel's column; the row is chosen per stage
    int scale_destination[kScaleCopies];
    int scale_slot[kScaleCopies];
    int scale_row[kScaleCopies];  // 0, or 1 for the second group of a k-block (group 32 only)

    __device__ __forceinline__ CopyPlan(const Params& params, const TileWork& work) {
      const int thread = threadIdx.x;
      const uint8_t* packed = static_cast<const uint8_t*>(params.packed_weights);
      constexpr int kWeightChunksPerSlot = Tile::kWeightBytes / 16;
      #pragma unroll
      for (int i = 0; i < kWeightCopies; ++i) {
        const int chunk = thread + i * Tile::kThreads;
        const int slot = chunk / kWeightChunksPerSlot, in_slot = chunk % kWeightChunksPerSlot;
        const int row_block = work.n_begin / layout::kTileRows + in_slot / 32;
        const bool valid = chunk < kWeightChunks && row_block < params.n / layout::kTileRows;
        weight_slot[i] = slot;
        weight_destination[i] = valid ? slot * Tile::kSlotBytes + in_slot * 16 : -1;
        weight_source[i] = packed + layout::tile_offset_bytes(row_block, slot, params.k) + (in_slot % 32) * 16;
      }
      constexpr int kActivationChunksPerSlot = Tile::kTileM * 8;
      #pragma unroll
      for (int i = 0; i < kActivationCopies; ++i) {
        const int chunk = thread + i * Tile::kThreads;
        const int slot = chunk / kActivationChunksPerSlot, in_slot = chunk % kActivationChunksPerSlot;
        const int row = in_slot / 8, column_chunk = in_slot % 8;
        const bool valid = chunk < kActivationChunks && work.m_begin + row < params.m;
        activation_slot[i] = slot;
        activation_destination[i] =
            valid ? slot * Tile::kSlotBytes + Tile::kWeightBytes + swizzled_offset(row, column_chunk) : -1;
        activation_source[i] = params.a + static_cast<long long>(work.m_begin + row) * params.k +
                               slot * Tile::kBlockK + column_chunk * 8;
      }
      constexpr int kScaleChunksPerRow = Tile::kTileN / 8;
      constexpr int kScaleChunksPerSlot = 2 * kScaleChunksPerRow;
      const bool two_groups = params.group_size == 32;
      #pragma unroll
      for (int i = 0; i < kScaleCopies; ++i) {
        const int chunk = thread + i * Tile::kThreads;
        const int slot = chunk / kScaleChunksPerSlot, in_slot = chunk % kScaleChunksPerSlot;
        const int row = in_slot / kScaleChunksPerRow, column_chunk = in_slot % kScaleChunksPerRow;
        const int channel = work.n_begin + column_chunk * 8;
        const bool valid = chunk < kScaleChunks && channel < params.n && (row == 0 || two_groups);
        scale_slot[i] = slot;
        scale_row[i] = row;
        scale_destination[i] = valid ? slot * Tile::kSlotBytes + Tile::kWeightBytes + Tile::kActivationBytes +
                                           row * Tile::kTileN * 2 + column_chunk * 16
                                     : -1;
        scale_source[i] = params.scales + channel;
      }
    }

    // Issues the copies of the stage whose first k-block is `first_block` into buffer `stage`.
    // Slots past the end of this block's k range are skipped (their warps skip compute too).
    // Weights and scales are split from activations so that the prologue can fetch the former
    // before waiting for the previous kernel (see run()).
    __device__ __forceinline__ void issue_weights_and_scales(const Params& params, uint8_t* shared, int stage,
                                                             int first_block, int end_block) const {
      uint8_t* stage_base = shared + stage * Tile::kStageBytes;
      #pragma unroll
      for (int i = 0; i < kWeightCopies; ++i) {
        if (weight_destination[i] >= 0 && first_block + weight_slot[i] < end_block) {
          ptx::cp_async_16(stage_base + weight_destination[i],
                           weight_source[i] + static_cast<long long>(first_block) * layout::kTileBytes);
        }
      }
      #pragma unroll
      for (int i = 0; i < kScaleCopies; ++i) {
        const int block = first_block + scale_slot[i];
        if (scale_destination[i] >= 0 && block < end_block) {
          // Group of the block's first column (or its second half, for group 32); see
          // Params::group_shift.
          const int group = ((block * Tile::kBlockK) >> params.group_shift) + scale_row[i];
          ptx::cp_async_16(stage_base + scale_destination[i],
                           scale_source[i] + static_cast<long long>(group) * params.n);
        }
      }
    }

    __device__ __forceinline__ void issue_activations(uint8_t* shared, int stage, int first_block,
                                                      int end_block) const {
      uint8_t* stage_base = shared + stage * Tile::kStageBytes;
      #pragma unroll
      for (int i = 0; i < kActivationCopies; ++i) {
        if (activation_destination[i] >= 0 && first_block + activation_slot[i] < end_block) {
          ptx::cp_async_16(stage_base + activation_destination[i],
                           activation_source[i] + first_block * Tile::kBlockK);
        }
      }
    }
  };

  // Activation fragments for one 16-wide k slice via ldmatrix: matrix 2j covers k 0..7 and matrix
  // 2j+1 k 8..15 of 8 rows, which is exactly the mma's B fragment {b0, b1}.
  static __device__ __forceinline__ void load_activations(const Slot& slot, int warp_m, int k_slice,
                                                          uint32_t (&activation)[Tile::kFragmentsM][2]) {
    const int lane = threadIdx.x % 32;
    const int warp_row = warp_m * Tile::kWarpTileM;
    if constexpr (Tile::kFragmentsM % 2 == 0) {
      #pragma unroll
      for (int pair = 0; pair < Tile::kFragmentsM / 2; ++pair) {
        const int matrix = lane / 8;
        const int row = warp_row + pair * 16 + (matrix / 2) * 8 + lane % 8;
        uint32_t registers[4];
        ptx::ldmatrix_x4(registers, slot.activations + swizzled_offset(row, 2 * k_slice + (matrix & 1)));
        activation[2 * pair][0] = registers[0];
        activation[2 * pair][1] = registers[1];
        activation[2 * pair + 1][0] = registers[2];
        activation[2 * pair + 1][1] = registers[3];
      }
    } else {
      #pragma unroll
      for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
        const int matrix = (lane / 8) & 1;
        const int row = warp_row + fragment_m * 8 + lane % 8;
        ptx::ldmatrix_x2(activation[fragment_m], slot.activations + swizzled_offset(row, 2 * k_slice + matrix));
      }
    }
  }

  static __device__ __forceinline__ uint32_t word_of(const uint4& packed, int k_slice) {
    return k_slice == 0 ? packed.x : k_slice == 1 ? packed.y : k_slice == 2 ? packed.z : packed.w;
  }

  // Where the group scale is applied. Decode tiles (at most two 8-row fragments per warp) feed each
  // dequantized weight fragment to only one or two mma, so scaling the fragment (4 hmul2 per 16x16
  // weights) costs more than scaling a partial sum once per group (4 ffma per 8-row fragment): the
  // codes go into the mma as exact small integers, the products accumulate in fp32 per group, and
  // the scale multiplies that sum. It is also the more accurate order (no fp16 rounding of w).
  // Wider tiles reuse each fragment across 4-16 mma, where scaling the fragment is cheaper.
  static constexpr bool kScaleAfterMma = Tile::kFragmentsM <= 2;

  // Multiplies one k-block (one slot of a stage) into the accumulators.
  static __device__ __forceinline__ void compute_slot(const Slot& slot, bool two_groups, int warp_m, int warp_n,
                                                      Accumulators& accumulators) {
    const int lane = threadIdx.x % 32;
    // Each lane's 16 packed bytes of each of its weight tiles: four words = four 16-wide k slices.
    uint4 packed[Tile::kFragmentsN];
    #pragma unroll
    for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
      const int tile_in_slot = warp_n * Tile::kFragmentsN + fragment_n;
      packed[fragment_n] = reinterpret_cast<const uint4*>(slot.weights)[tile_in_slot * 32 + lane];
    }
    // Scale of channel r (low) and r + 8 (high) of fragment n in scale row `row` (0, or 1 for the
    // second group of a k-block when group = 32).
    auto scale = [&](int row, int fragment_n, bool high) {
      const int channel = warp_n * Tile::kWarpTileN + fragment_n * 16 + lane / 4 + (high ? 8 : 0);
      return slot.scales[row * Tile::kTileN + channel];
    };

    if constexpr (kScaleAfterMma) {
      float partial[Tile::kFragmentsN][Tile::kFragmentsM][4];
      auto clear = [&] {
        #pragma unroll
        for (int n = 0; n < Tile::kFragmentsN; ++n)
          #pragma unroll
          for (int m = 0; m < Tile::kFragmentsM; ++m)
            #pragma unroll
            for (int i = 0; i < 4; ++i) partial[n][m][i] = 0.0f;
      };
      auto fold = [&](int row) {  // accumulators += partial * scale
        #pragma unroll
        for (int n = 0; n < Tile::kFragmentsN; ++n) {
          const float low = __half2float(scale(row, n, false)), high = __half2float(scale(row, n, true));
          #pragma unroll
          for (int m = 0; m < Tile::kFragmentsM; ++m) {
            accumulators[n][m][0] = fmaf(partial[n][m][0], low, accumulators[n][m][0]);
            accumulators[n][m][1] = fmaf(partial[n][m][1], low, accumulators[n][m][1]);
            accumulators[n][m][2] = fmaf(partial[n][m][2], high, accumulators[n][m][2]);
            accumulators[n][m][3] = fmaf(partial[n][m][3], high, accumulators[n][m][3]);
          }
        }
      };
      clear();
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) {
          fold(0);
          clear();
        }
        uint32_t activation[Tile::kFragmentsM][2];
        load_activations(slot, warp_m, k_slice, activation);
        #pragma unroll
        for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
          uint32_t codes[4];
          dequantize_codes(word_of(packed[fragment_n], k_slice), codes);
          #pragma unroll
          for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
            ptx::mma_m16n8k16(partial[fragment_n][fragment_m], codes, activation[fragment_m]);
          }
        }
      }
      fold(two_groups ? 1 : 0);
    } else {
      __half2 scale_low[Tile::kFragmentsN], scale_high[Tile::kFragmentsN];
      auto load_scales = [&](int row) {
        #pragma unroll
        for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
          scale_low[fragment_n] = __half2half2(scale(row, fragment_n, false));
          scale_high[fragment_n] = __half2half2(scale(row, fragment_n, true));
        }
      };
      load_scales(0);
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) load_scales(1);
        uint32_t activation[Tile::kFragmentsM][2];
        load_activations(slot, warp_m, k_slice, activation);
        #pragma unroll
        for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
          uint32_t weights[4];
          dequantize_fragment(word_of(packed[fragment_n], k_slice), scale_low[fragment_n], scale_high[fragment_n],
                              weights);
          #pragma unroll
          for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
            ptx::mma_m16n8k16(accumulators[fragment_n][fragment_m], weights, activation[fragment_m]);
          }
        }
      }
    }
  }

  // The pipeline. Stage i covers k-blocks first + i * WarpsK ... (+ WarpsK - 1) and lives in ring
  // buffer i % Stages. Invariant at the top of iteration i: stages i .. i + Stages - 2 have been
  // issued, one commit group each (empty groups past the end keep the count uniform), so waiting
  // until at most Stages - 2 groups are pending means stage i has landed.
  static __device__ __forceinline__ void run(const Params& params, const TileWork& work, uint8_t* shared, int warp_m,
                                             int warp_n, int warp_k, Accumulators& accumulators) {
    #pragma unroll
    for (int n = 0; n < Tile::kFragmentsN; ++n)
      #pragma unroll
      for (int m = 0; m < Tile::kFragmentsM; ++m)
        #pragma unroll
        for (int i = 0; i < 4; ++i) accumulators[n][m][i] = 0.0f;

    const CopyPlan plan(params, work);
    // Mainloop iterations: one per stage's worth (WarpsK k-blocks) of this block's k range.
    const int iterations = (work.k_block_end - work.k_block_begin + Tile::kWarpsK - 1) / Tile::kWarpsK;
    // Prologue. Weights and scales are constant inputs, so their first Stages - 1 stages are
    // requested before waiting for the previous kernel in the stream (programmatic dependent
    // launch): at decode sizes that hides this kernel's ramp-up behind the previous one's tail.
    // Activations (the previous kernel's output, typically) are only read after the wait. All the
    // prologue's weight copies land in commit group 0, so the wait for stage i below still implies
    // every copy of stage i has landed.
    #pragma unroll
    for (int s = 0; s < Tile::kStages - 1; ++s) {
      if (s < iterations) {
        plan.issue_weights_and_scales(params, shared, s, work.k_block_begin + s * Tile::kWarpsK, work.k_block_end);
      }
    }
    ptx::grid_dependency_wait();
    #pragma unroll
    for (int s = 0; s < Tile::kStages - 1; ++s) {
      if (s < iterations) plan.issue_activations(shared, s, work.k_block_begin + s * Tile::kWarpsK, work.k_block_end);
      ptx::cp_async_commit();
    }

    const bool two_groups = params.group_size == 32;
    for (int i = 0; i < iterations; ++i) {
      ptx::cp_async_wait<Tile::kStages - 2>();
      // Makes stage i visible to every warp, and guarantees every warp has finished computing on
      // the buffer the next copy overwrites (it held stage i - 1).
      __syncthreads();
      const int next = i + Tile::kStages - 1;
      if (next < iterations) {
        const int first = work.k_block_begin + next * Tile::kWarpsK;
        plan.issue_weights_and_scales(params, shared, next % Tile::kStages, first, work.k_block_end);
        plan.issue_activations(shared, next % Tile::kStages, first, work.k_block_end);
      }
      ptx::cp_async_commit();
      const int block = work.k_block_begin + i * Tile::kWarpsK + warp_k;
      if (block < work.k_block_end) {
        const int offset = slot_offset(i % Tile::kStages, warp_k);
        const Slot slot{shared + offset, shared + offset + Tile::kWeightBytes,
                        reinterpret_cast<const __half*>(shared + offset + Tile::kWeightBytes + Tile::kActivationBytes)};
        compute_slot(slot, two_groups, warp_m, warp_n, accumulators);
      }
    }
    ptx::cp_async_wait<0>();
  }

  // In-block split-K: warps with warp_k > 0 park their accumulators in shared memory (the pipeline
  // is drained, so its buffers are free); warp_k == 0 adds them in warp_k order, so the sum is the
  // same on every run. Afterwards only warp_k == 0 holds the block's result.
  static __device__ __forceinline__ void reduce_across_warps_k(uint8_t* shared, int warp_m, int warp_n, int warp_k,
                                                               Accumulators& accumulators) {
    if constexpr (Tile::kWarpsK > 1) {
      const int lane = threadIdx.x % 32;
      float* parked = reinterpret_cast<float*>(shared);
      const int position = warp_m * Tile::kWarpsN + warp_n;
      auto at = [&](int k_warp, int index) {
        return ((k_warp - 1) * Tile::kWarpsM * Tile::kWarpsN + position) * Tile::kAccumulatorsPerWarp + index * 32 +
               lane;
      };
      __syncthreads();  // every warp is done reading the pipeline buffers
      if (warp_k > 0) {
        #pragma unroll
        for (int n = 0; n < Tile::kFragmentsN; ++n)
          #pragma unroll
          for (int m = 0; m < Tile::kFragmentsM; ++m)
            #pragma unroll
            for (int i = 0; i < 4; ++i) parked[at(warp_k, (n * Tile::kFragmentsM + m) * 4 + i)] = accumulators[n][m][i];
      }
      __syncthreads();
      if (warp_k == 0) {
        for (int k_warp = 1; k_warp < Tile::kWarpsK; ++k_warp) {
          #pragma unroll
          for (int n = 0; n < Tile::kFragmentsN; ++n)
            #pragma unroll
            for (int m = 0; m < Tile::kFragmentsM; ++m)
              #pragma unroll
              for (int i = 0; i < 4; ++i)
                accumulators[n][m][i] += parked[at(k_warp, (n * Tile::kFragmentsM + m) * 4 + i)];
        }
      }
    }
  }
};

}  // namespace w4a16::tensor_core_sm80
