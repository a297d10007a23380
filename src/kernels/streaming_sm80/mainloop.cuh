#pragma once
// The streaming mainloop (decode, m <= 16): every lane streams its own weight bytes through a
// private ring in shared memory, so the k loop has no block barrier and almost no copy
// bookkeeping.
//
// Why a second decode mainloop: at m <= 16 the multistage loop (tensor_core_sm80/mainloop.cuh)
// is bound by instruction issue, not by HBM. Per 1 KB k-block a warp spends ~170 instructions,
// of which only ~80 are the dequantize + mma work itself; the rest is copy planning for a stage
// shared by the whole block, the per-stage barrier, and a ~550-instruction prologue, which a
// 4096 x 4096 layer (8 k-blocks per warp) never amortizes (bench/NOTES.md, entry 16).
//
// The packed layout makes a lane-private pipeline possible: lane L's A fragments of a 512-byte
// tile are exactly the 16 bytes at offset 16 L (common/packed_layout.h). So lane L copies those
// 16 bytes of each of its warp's FragmentsN tiles into its own 16-byte cells of a Stages-deep
// ring with cp.async, waits for its own copies (cp.async.wait_group), and reads them back; no
// other thread ever touches its cells, so no barrier (not even __syncwarp) is needed. The ring
// keeps Stages - 1 k-blocks in flight per warp without holding them in registers (a register
// ring of two or three k-blocks was tried first: 10-20% slower, not enough bytes in flight).
//
//   activations  lane L needs row L / 4 at columns 2 (L % 4) + {0, 1} and + {8, 9} of every
//                16-wide slice: eight 4-byte loads per 8-row fragment per k-block, from L1
//                (every warp of the SM reads the same few rows), one k-block ahead;
//   scales       one row per group, loaded with the activations of the k-block that ends it.
//
// Each warp owns 16 * FragmentsN channels and a contiguous run of k-blocks. The codes go into the
// mma as exact small integers and the group scale multiplies each group's fp32 partial sum once
// (as the multistage loop does for decode tiles); with contiguous k-blocks that is once per group
// rather than once per k-block.
//
// The warps of a block that share an output position (WarpsK of them) split its k range and are
// summed through shared memory afterwards by the tensor_core_sm80 reduction; split-K across
// blocks, the epilogue and the tile scheduler are tensor_core_sm80's too.

#include <cstdint>

#include "common/packed_layout.h"
#include "kernels/common/dequant.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/tensor_core_sm80/tile_scheduler.cuh"

namespace w4a16::streaming_sm80 {

using tensor_core_sm80::Params;
using tensor_core_sm80::TileWork;

template <class Tile>
struct Mainloop {
  static constexpr int kFragmentsN = Tile::kFragmentsN;
  static constexpr int kFragmentsM = Tile::kFragmentsM;
  // Ring depth in k-blocks; Stages - 1 of them are in flight while the warp multiplies one.
  // Little's law: an H100 SM needs ~30 KB in flight for its 1/132 share of 3 TB/s at ~1.3 us
  // loaded latency; 8-16 warps x (Stages - 1) x 1-2 KB covers that several times over.
  static constexpr int kStages = Tile::kStages;
  static constexpr int kWarpRingBytes = kStages * kFragmentsN * layout::kTileBytes;
  using Accumulators = float[kFragmentsN][kFragmentsM][4];

  static_assert(Tile::kWarpsM == 1, "streaming tiles keep all of the block's rows in each warp");
  static_assert(kStages >= 2, "the ring needs a k-block in flight");

  // One k-block's activations and (when it ends a group) scales, loaded one k-block ahead.
  struct Operands {
    uint32_t activations[kFragmentsM][4][2];  // [8-row fragment][k slice] = mma B fragment {b0, b1}
    __half2 scales[kFragmentsN];              // group scale of channels L / 4 (x) and L / 4 + 8 (y)
  };

  static __device__ __forceinline__ uint32_t word_of(const uint4& packed, int k_slice) {
    return k_slice == 0 ? packed.x : k_slice == 1 ? packed.y : k_slice == 2 ? packed.z : packed.w;
  }

  static __device__ __forceinline__ void run(const Params& params, const TileWork& work, uint8_t* shared,
                                             int /*warp_m*/, int warp_n, int warp_k, Accumulators& accumulators) {
    const int lane = threadIdx.x % 32;
    const int k_blocks = params.k / layout::kTileCols;

    // This warp's k-blocks: a contiguous share of the block's range.
    const int range = work.k_block_end - work.k_block_begin;
    const int begin = work.k_block_begin + range * warp_k / Tile::kWarpsK;
    const int end = work.k_block_begin + range * (warp_k + 1) / Tile::kWarpsK;
    const int count = end - begin;

    // Weights: fragment f is row block first_row_block + f; its k-block b is the 512-byte tile at
    // (row_block * k_blocks + b) * 512, of which this lane copies bytes 16 L .. 16 L + 15 into
    // ring cell [stage][f] (shared address ring + stage * kStageStride + f * 512). Row blocks past
    // n are never copied: their outputs are not stored, and an mma output row depends on its own
    // weight row only.
    const int first_channel = work.n_begin + warp_n * Tile::kWarpTileN;
    const int first_row_block = first_channel / layout::kTileRows;
    const long long fragment_stride = static_cast<long long>(k_blocks) * layout::kTileBytes;
    const uint8_t* weights = static_cast<const uint8_t*>(params.packed_weights) +
                             first_row_block * fragment_stride + static_cast<long long>(begin) * layout::kTileBytes +
                             lane * 16;
    bool fragment_valid[kFragmentsN];
    #pragma unroll
    for (int f = 0; f < kFragmentsN; ++f) fragment_valid[f] = first_row_block + f < params.n / layout::kTileRows;
    constexpr int kStageStride = kFragmentsN * layout::kTileBytes;
    uint32_t ring = ptx::shared_address(shared) + (threadIdx.x / 32) * kWarpRingBytes + lane * 16;
    ptx::pin(ring);

    // Copies k-block begin + i (the i-th of this warp) into ring stage `stage`; one commit group
    // per call, empty past the end, so that "wait until Stages - 2 groups are pending" always
    // means "the oldest k-block has landed".
    const uint8_t* next_copy = weights;
    auto copy_weights = [&](uint32_t stage_address, bool valid) {
      if (valid) {
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          if (fragment_valid[f]) ptx::cp_async_16(stage_address + f * layout::kTileBytes, next_copy + f * fragment_stride);
        }
      }
      next_copy += layout::kTileBytes;
      ptx::cp_async_commit();
    };

    // Activations: row L / 4 of each 8-row fragment, columns 2 (L % 4) + ... of each slice.
    // Rows past m are not loaded and stay zero.
    const __half* activations[kFragmentsM];
    bool row_valid[kFragmentsM];
    #pragma unroll
    for (int fm = 0; fm < kFragmentsM; ++fm) {
      const int row = work.m_begin + fm * 8 + lane / 4;
      row_valid[fm] = row < params.m;
      activations[fm] = params.a + static_cast<long long>(row_valid[fm] ? row : 0) * params.k + 2 * (lane % 4);
    }

    // Scales: channel L / 4 of fragment f is first_channel + 16 f + L / 4 (and + 8 for the high
    // half), so one base pointer per group row and immediate offsets.
    const __half* scales = params.scales + first_channel + lane / 4;
    const bool two_groups = params.group_size == 32;
    // A group ends after k-block b when (b + 1) * 64 is a multiple of the group. For a per-channel
    // group that is not a power of two (group_shift 31, see Params) the mask keeps every bit, so
    // it never ends inside the range; a warp folds at the end of its range in any case.
    const int group_mask = params.group_shift >= 31 ? 0x7fffffff : (1 << params.group_shift) - 1;
    auto folds_after = [&](int block) {
      return two_groups || (((block + 1) * layout::kTileCols) & group_mask) == 0 || block + 1 == end;
    };
    auto group_row = [&](int block) {
      return static_cast<long long>((block * layout::kTileCols) >> params.group_shift) * params.n;
    };
    auto load_scales = [&](const __half* row, __half2 (&into)[kFragmentsN]) {
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) {
        if (fragment_valid[f]) into[f] = __halves2half2(row[16 * f], row[16 * f + 8]);
      }
    };
    auto load_operands = [&](Operands& operands, int block) {
      #pragma unroll
      for (int fm = 0; fm < kFragmentsM; ++fm) {
        if (!row_valid[fm]) continue;
        const __half* source = activations[fm] + block * layout::kTileCols;
        #pragma unroll
        for (int k_slice = 0; k_slice < 4; ++k_slice) {
          operands.activations[fm][k_slice][0] = *reinterpret_cast<const uint32_t*>(source + 16 * k_slice);
          operands.activations[fm][k_slice][1] = *reinterpret_cast<const uint32_t*>(source + 16 * k_slice + 8);
        }
      }
      if (folds_after(block)) load_scales(scales + group_row(block), operands.scales);
    };

    float partial[kFragmentsN][kFragmentsM][4];
    auto clear = [&](float (&values)[kFragmentsN][kFragmentsM][4]) {
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f)
        #pragma unroll
        for (int fm = 0; fm < kFragmentsM; ++fm)
          #pragma unroll
          for (int i = 0; i < 4; ++i) values[f][fm][i] = 0.0f;
    };
    auto fold = [&](const __half2 (&group_scales)[kFragmentsN]) {  // accumulators += partial * scale
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) {
        const float scale_low = __low2float(group_scales[f]), scale_high = __high2float(group_scales[f]);
        #pragma unroll
        for (int fm = 0; fm < kFragmentsM; ++fm) {
          accumulators[f][fm][0] = fmaf(partial[f][fm][0], scale_low, accumulators[f][fm][0]);
          accumulators[f][fm][1] = fmaf(partial[f][fm][1], scale_low, accumulators[f][fm][1]);
          accumulators[f][fm][2] = fmaf(partial[f][fm][2], scale_high, accumulators[f][fm][2]);
          accumulators[f][fm][3] = fmaf(partial[f][fm][3], scale_high, accumulators[f][fm][3]);
        }
      }
      clear(partial);
    };

    auto compute = [&](uint32_t stage_address, const Operands& operands, int block) {
      uint4 packed[kFragmentsN];
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) packed[f] = ptx::ld_shared_128(stage_address + f * layout::kTileBytes);
      // Group 32: a k-block holds two groups; the second one's scales are loaded here, ahead of
      // the slices that need them.
      __half2 second[kFragmentsN];
      if (two_groups) load_scales(scales + group_row(block) + params.n, second);
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) fold(operands.scales);
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          uint32_t codes[4];
          dequantize_codes(word_of(packed[f], k_slice), codes);
          #pragma unroll
          for (int fm = 0; fm < kFragmentsM; ++fm) {
            ptx::mma_m16n8k16(partial[f][fm], codes, operands.activations[fm][k_slice]);
          }
        }
      }
      if (two_groups) {
        fold(second);
      } else if (folds_after(block)) {
        fold(operands.scales);
      }
    };

    clear(accumulators);
    clear(partial);
    Operands operands[2];  // k-blocks i and i + 1: double-buffered, the loop below is unrolled by 2
    #pragma unroll
    for (int b = 0; b < 2; ++b) {
      #pragma unroll
      for (int fm = 0; fm < kFragmentsM; ++fm)
        #pragma unroll
        for (int k_slice = 0; k_slice < 4; ++k_slice) {
          operands[b].activations[fm][k_slice][0] = 0;
          operands[b].activations[fm][k_slice][1] = 0;
        }
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) operands[b].scales[f] = __half2();
    }

    // Prologue: the first Stages - 1 k-blocks of weights. Weights are constant inputs and are
    // requested before waiting for the previous kernel (programmatic dependent launch);
    // activations, which that kernel typically writes, after.
    #pragma unroll
    for (int s = 0; s < kStages - 1; ++s) copy_weights(ring + s * kStageStride, s < count);
    ptx::grid_dependency_wait();
    if (count > 0) load_operands(operands[0], begin);

    // Iteration i: refill the stage k-block i - 1 used (its values were consumed in iteration
    // i - 1) with k-block i + Stages - 1, load k-block i + 1's activations, wait for k-block i's
    // weights, multiply. Stage offsets advance with a wrap instead of a modulo.
    uint32_t read_stage = 0, write_stage = (kStages - 1) * kStageStride;
    auto advance = [](uint32_t offset) {
      return offset + kStageStride == static_cast<uint32_t>(kWarpRingBytes) ? 0u : offset + kStageStride;
    };
    auto iteration = [&](int i, Operands& current, Operands& next) {
      copy_weights(ring + write_stage, i + kStages - 1 < count);
      if (i + 1 < count) load_operands(next, begin + i + 1);
      ptx::cp_async_wait<kStages - 1>();
      compute(ring + read_stage, current, begin + i);
      read_stage = advance(read_stage);
      write_stage = advance(write_stage);
    };
    for (int i = 0; i < count; i += 2) {
      iteration(i, operands[0], operands[1]);
      if (i + 1 < count) iteration(i + 1, operands[1], operands[0]);
    }
    ptx::cp_async_wait<0>();
  }
};

}  // namespace w4a16::streaming_sm80
