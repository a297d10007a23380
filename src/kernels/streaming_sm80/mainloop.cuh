#pragma once
// The streaming mainloop (decode, m <= 16): every lane streams its own operands through a private
// ring in shared memory, so the k loop has no block barrier and almost no copy bookkeeping.
//
// Why a second decode mainloop: at m <= 16 the multistage loop (tensor_core_sm80/mainloop.cuh)
// is bound by instruction issue and barrier waits, not by HBM. Per 1 KB k-block a warp spends
// ~170 instructions, of which only ~80 are the dequantize + mma work itself; the rest is copy
// planning for a stage shared by the whole block, the per-stage barrier, and a ~550-instruction
// prologue, which a 4096 x 4096 layer (8 k-blocks per warp) never amortizes (bench/NOTES.md,
// entry 16).
//
// The packed layout makes a lane-private pipeline possible: lane L's A fragments of a 512-byte
// tile are exactly the 16 bytes at offset 16 L (common/packed_layout.h). So each lane copies, per
// k-block, with cp.async into its own 16-byte cells of a Stages-deep ring:
//   weights      its 16 bytes of each of the warp's FragmentsN tiles;
//   activations  the mma B fragments it needs: row L / 4, columns 2 (L % 4) + {0, 1} and
//                + {8, 9} of each 16-wide slice, eight 4-byte words per 8-row fragment (rows
//                past m are not copied; their outputs are not stored);
//   scales       when the k-block ends a group: for each fragment, the aligned 4-byte pairs
//                holding the scales of its channels L / 4 and L / 4 + 8.
// Then it waits for its own copies (cp.async.wait_group) and reads its own cells back. No other
// thread touches them, so no barrier (not even __syncwarp) is needed, and Stages - 1 k-blocks
// stay in flight without holding registers. (Two earlier versions are in bench/NOTES.md, entry
// 16: a register ring was 10-20% slower, and loading activations with plain loads one k-block
// ahead left warps waiting on them: L2 latency under a saturated HBM stream is long.)
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
  // loaded latency; 8-16 warps x (Stages - 1) x 1-2 KB of weights covers that.
  static constexpr int kStages = Tile::kStages;
  // One stage of one warp: arrays of 32 lane cells of 16 bytes (512 bytes each), so that the
  // 16-byte reads back are conflict-free: FragmentsN weight arrays, then two activation arrays
  // per 8-row fragment (slices 0-1, slices 2-3), then one scale array per two weight fragments.
  static constexpr int kStageBytes = Tile::kStreamingStageBytes;
  static constexpr int kActivationOffset = kFragmentsN * layout::kTileBytes;
  static constexpr int kScaleOffset = kActivationOffset + kFragmentsM * 2 * 512;
  static constexpr int kWarpRingBytes = kStages * kStageBytes;
  using Accumulators = float[kFragmentsN][kFragmentsM][4];

  static_assert(Tile::kWarpsM == 1, "streaming tiles keep all of the block's rows in each warp");
  static_assert(kStages >= 2, "the ring needs a k-block in flight");

  static __device__ __forceinline__ uint32_t word_of(const uint4& packed, int index) {
    return index == 0 ? packed.x : index == 1 ? packed.y : index == 2 ? packed.z : packed.w;
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
    // (row_block * k_blocks + b) * 512 (packed_layout.h). Row blocks past n are never copied:
    // their outputs are not stored, and an mma output row depends on its own weight row only.
    const int first_channel = work.n_begin + warp_n * Tile::kWarpTileN;
    const int first_row_block = first_channel / layout::kTileRows;
    const long long fragment_stride = static_cast<long long>(k_blocks) * layout::kTileBytes;
    const uint8_t* weight_source = static_cast<const uint8_t*>(params.packed_weights) +
                                   first_row_block * fragment_stride +
                                   static_cast<long long>(begin) * layout::kTileBytes + lane * 16;
    bool fragment_valid[kFragmentsN];
    #pragma unroll
    for (int f = 0; f < kFragmentsN; ++f) fragment_valid[f] = first_row_block + f < params.n / layout::kTileRows;

    // Activations: row L / 4 of each 8-row fragment, from column 2 (L % 4) of the k-block.
    const __half* activation_source[kFragmentsM];
    bool row_valid[kFragmentsM];
    #pragma unroll
    for (int fm = 0; fm < kFragmentsM; ++fm) {
      const int row = work.m_begin + fm * 8 + lane / 4;
      row_valid[fm] = row < params.m;
      activation_source[fm] = params.a + static_cast<long long>(row_valid[fm] ? row : 0) * params.k +
                              static_cast<long long>(begin) * layout::kTileCols + 2 * (lane % 4);
    }

    // Scales: channel L / 4 of fragment f is first_channel + 16 f + L / 4, and its 4-byte aligned
    // pair starts at the even channel below it (first_channel is a multiple of 16, so which half
    // of the pair is ours depends on L / 4 alone).
    const __half* scale_source = params.scales + first_channel + (lane / 4 & ~1);
    // byte_perm selector taking our half of the low channel's pair (bytes 0-3) into .x and of the
    // high channel's pair (bytes 4-7) into .y.
    const uint32_t scale_selector = (lane / 4) % 2 == 0 ? 0x5410 : 0x7632;
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

    uint32_t ring = ptx::shared_address(shared) + (threadIdx.x / 32) * kWarpRingBytes + lane * 16;
    ptx::pin(ring);

    // Copies this warp's next k-block (the sources advance by one k-block per call) into the
    // stage at `stage`; one commit group per call, empty past the end, so that "wait until
    // Stages - 1 groups are pending" always means "the oldest k-block has landed".
    int next_block = begin;
    auto copy_stage = [&](uint32_t stage) {
      if (next_block < end) {
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          if (fragment_valid[f]) ptx::cp_async_16(stage + f * layout::kTileBytes, weight_source + f * fragment_stride);
        }
        #pragma unroll
        for (int fm = 0; fm < kFragmentsM; ++fm) {
          if (!row_valid[fm]) continue;
          #pragma unroll
          for (int k_slice = 0; k_slice < 4; ++k_slice) {
            // Slices 0-1 go to the first array, 2-3 to the second: word (k_slice % 2) * 2 + j
            // of the cell is b_j of that slice.
            const uint32_t cell = stage + kActivationOffset + (fm * 2 + k_slice / 2) * 512 + (k_slice % 2) * 8;
            ptx::cp_async_4(cell, activation_source[fm] + 16 * k_slice);
            ptx::cp_async_4(cell + 4, activation_source[fm] + 16 * k_slice + 8);
          }
        }
        if (folds_after(next_block)) {
          const __half* row = scale_source + group_row(next_block);
          #pragma unroll
          for (int f = 0; f < kFragmentsN; ++f) {
            if (!fragment_valid[f]) continue;
            const uint32_t cell = stage + kScaleOffset + (f / 2) * 512 + (f % 2) * 8;
            ptx::cp_async_4(cell, row + 16 * f);
            ptx::cp_async_4(cell + 4, row + 16 * f + 8);
          }
        }
      }
      ptx::cp_async_commit();
      weight_source += layout::kTileBytes;
      #pragma unroll
      for (int fm = 0; fm < kFragmentsM; ++fm) activation_source[fm] += layout::kTileCols;
      ++next_block;
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
    // The landed scale pairs of a stage -> (scale of channel L / 4, of L / 4 + 8) per fragment.
    auto stage_scales = [&](uint32_t stage, __half2 (&into)[kFragmentsN]) {
      #pragma unroll
      for (int pair = 0; pair < (kFragmentsN + 1) / 2; ++pair) {
        const uint4 words = ptx::ld_shared_128(stage + kScaleOffset + pair * 512);
        #pragma unroll
        for (int j = 0; j < 2 && 2 * pair + j < kFragmentsN; ++j) {
          const uint32_t bits = __byte_perm(word_of(words, 2 * j), word_of(words, 2 * j + 1), scale_selector);
          into[2 * pair + j] = as_half2(bits);
        }
      }
    };

    auto compute = [&](uint32_t stage, int block) {
      uint4 packed[kFragmentsN];
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) packed[f] = ptx::ld_shared_128(stage + f * layout::kTileBytes);
      uint4 activations[kFragmentsM][2];
      #pragma unroll
      for (int fm = 0; fm < kFragmentsM; ++fm) {
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
          activations[fm][half] = ptx::ld_shared_128(stage + kActivationOffset + (fm * 2 + half) * 512);
        }
      }
      // Group 32: a k-block holds two groups; the second one's scales are read from global
      // memory here, ahead of the slices that need them (group 32 is rare enough not to give
      // them ring space).
      __half2 second[kFragmentsN];
      if (two_groups) {
        const __half* row = scale_source + group_row(block) + params.n;
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          const uint32_t low = fragment_valid[f] ? *reinterpret_cast<const uint32_t*>(row + 16 * f) : 0u;
          const uint32_t high = fragment_valid[f] ? *reinterpret_cast<const uint32_t*>(row + 16 * f + 8) : 0u;
          second[f] = as_half2(__byte_perm(low, high, scale_selector));
        }
      }
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) {
          __half2 first[kFragmentsN];
          stage_scales(stage, first);
          fold(first);
        }
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          uint32_t codes[4];
          dequantize_codes(word_of(packed[f], k_slice), codes);
          #pragma unroll
          for (int fm = 0; fm < kFragmentsM; ++fm) {
            const uint4& cell = activations[fm][k_slice / 2];
            const uint32_t fragment[2] = {word_of(cell, (k_slice % 2) * 2), word_of(cell, (k_slice % 2) * 2 + 1)};
            ptx::mma_m16n8k16(partial[f][fm], codes, fragment);
          }
        }
      }
      if (two_groups) {
        fold(second);
      } else if (folds_after(block)) {
        __half2 group_scales[kFragmentsN];
        stage_scales(stage, group_scales);
        fold(group_scales);
      }
    };

    clear(accumulators);
    clear(partial);
    // Zero this lane's activation cells once: rows past m are never copied, and stale shared
    // memory there could hold NaN bit patterns (harmless to the stored rows, but a cheap
    // guarantee that every value the mma sees is finite).
    #pragma unroll
    for (int s = 0; s < kStages; ++s) {
      #pragma unroll
      for (int array = 0; array < kFragmentsM * 2; ++array) {
        ptx::st_shared_zero_128(ring + s * kStageBytes + kActivationOffset + array * 512);
      }
    }

    // Prologue: the first Stages - 1 k-blocks. (Unlike the multistage loop this one does not
    // fetch weights ahead of the programmatic-launch wait: activations share the commit groups.)
    ptx::grid_dependency_wait();
    #pragma unroll
    for (int s = 0; s < kStages - 1; ++s) copy_stage(ring + s * kStageBytes);

    // Iteration i: refill the stage k-block i - 1 used (its values were read into registers and
    // consumed in iteration i - 1) with k-block i + Stages - 1, wait for k-block i, multiply.
    // Stage offsets advance with a wrap instead of a modulo.
    uint32_t read_stage = 0, write_stage = (kStages - 1) * kStageBytes;
    auto advance = [](uint32_t offset) {
      return offset + kStageBytes == static_cast<uint32_t>(kWarpRingBytes) ? 0u : offset + kStageBytes;
    };
    for (int i = 0; i < count; ++i) {
      copy_stage(ring + write_stage);
      ptx::cp_async_wait<kStages - 1>();
      compute(ring + read_stage, begin + i);
      read_stage = advance(read_stage);
      write_stage = advance(write_stage);
    }
    ptx::cp_async_wait<0>();
  }
};

}  // namespace w4a16::streaming_sm80
