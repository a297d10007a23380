#pragma once
// The streaming mainloop (decode, m <= 16): weights go from global memory straight into registers,
// with no shared-memory stage, no cp.async bookkeeping and no block barrier in the k loop.
//
// Why a second decode mainloop: at m <= 16 the multistage loop (tensor_core_sm80/mainloop.cuh)
// is bound by instruction issue, not by HBM. Per 1 KB k-block a warp spends ~170 instructions,
// of which only ~80 are the dequantize + mma work itself; the rest is copy planning, the
// shared-memory round trip (cp.async, then lds/ldmatrix), the per-stage barrier and a ~550
// instruction prologue, which a 4096 x 4096 layer (8 k-blocks per warp) never amortizes
// (bench/NOTES.md, entry 16). Here each warp owns 16 * FragmentsN channels and a contiguous run of
// k-blocks, and keeps `Depth` k-blocks of its own operands in flight in registers:
//
//   weights      the packed layout hands lane L the 16 bytes at offset 16 L of every 512-byte
//                tile, which are exactly its A fragments (common/packed_layout.h): one 16-byte
//                load per fragment per k-block, fully coalesced (a warp reads the whole tile);
//   activations  lane L needs row L / 4 at columns 2 (L % 4) + {0, 1} and + {8, 9} of every
//                16-wide slice: eight 4-byte loads per 8-row fragment per k-block, from L1 (every
//                warp of the SM reads the same few rows);
//   scales       one row per group, loaded with the k-block that ends the group.
//
// The codes go into the mma as exact small integers and the group scale multiplies each group's
// fp32 partial sum once (as the multistage loop does for decode tiles), so a warp folds once per
// group rather than once per k-block: its k-blocks are contiguous, not interleaved with its
// neighbours'.
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
  // k-blocks a warp has requested ahead of the one it multiplies. Little's law: an H100 SM must
  // keep ~25 KB in flight to get its 1/132 share of 3 TB/s at ~1 us latency; 12-16 warps with two
  // or three 1-2 KB k-blocks each cover that, in registers.
  static constexpr int kDepth = Tile::kStages;
  using Accumulators = float[kFragmentsN][kFragmentsM][4];

  static_assert(Tile::kWarpsM == 1, "streaming tiles keep all of the block's rows in each warp");

  // One k-block of one warp's operands.
  struct Operands {
    uint4 weights[kFragmentsN];                 // packed word j = k slice j (see packed_layout.h)
    uint32_t activations[kFragmentsM][4][2];    // [8-row fragment][k slice] = mma B fragment {b0, b1}
    __half2 scales[kFragmentsN];                // group scale of channels L / 4 (x) and L / 4 + 8 (y)
  };

  static __device__ __forceinline__ uint32_t word_of(const uint4& packed, int k_slice) {
    return k_slice == 0 ? packed.x : k_slice == 1 ? packed.y : k_slice == 2 ? packed.z : packed.w;
  }

  static __device__ __forceinline__ void run(const Params& params, const TileWork& work, uint8_t* /*shared*/,
                                             int /*warp_m*/, int warp_n, int warp_k, Accumulators& accumulators) {
    const int lane = threadIdx.x % 32;
    const int k_blocks = params.k / layout::kTileCols;

    // This warp's k-blocks: a contiguous share of the block's range.
    const int range = work.k_block_end - work.k_block_begin;
    const int begin = work.k_block_begin + range * warp_k / Tile::kWarpsK;
    const int end = work.k_block_begin + range * (warp_k + 1) / Tile::kWarpsK;

    // Weights: fragment f is row block first_row_block + f; its k-block b is the 512-byte tile at
    // (row_block * k_blocks + b) * 512, of which this lane loads bytes 16 L .. 16 L + 15. Row
    // blocks past n are never loaded: their outputs are not stored, and an mma output row depends
    // on its own weight row only.
    const int first_channel = work.n_begin + warp_n * Tile::kWarpTileN;
    const int first_row_block = first_channel / layout::kTileRows;
    const long long fragment_stride = static_cast<long long>(k_blocks) * layout::kTileBytes;
    const uint8_t* weights = static_cast<const uint8_t*>(params.packed_weights) +
                             first_row_block * fragment_stride + lane * 16;
    bool fragment_valid[kFragmentsN];
    #pragma unroll
    for (int f = 0; f < kFragmentsN; ++f) fragment_valid[f] = first_row_block + f < params.n / layout::kTileRows;

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

    auto load_weights = [&](Operands& operands, int block) {
      const uint8_t* tile = weights + static_cast<long long>(block) * layout::kTileBytes;
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) {
        // Streamed once: evict-first, as the benchmark's read floor does.
        if (fragment_valid[f]) operands.weights[f] = __ldcs(reinterpret_cast<const uint4*>(tile + f * fragment_stride));
      }
    };
    auto load_activations_and_scales = [&](Operands& operands, int block) {
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
      if (folds_after(block)) {
        const __half* row = scales + group_row(block);
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          if (!fragment_valid[f]) continue;
          operands.scales[f] = __halves2half2(row[16 * f], row[16 * f + 8]);
        }
      }
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

    auto compute = [&](const Operands& operands, int block) {
      // Group 32: a k-block holds two groups; the second one's scales are loaded here, ahead of
      // the slices that need them.
      __half2 second[kFragmentsN];
      if (two_groups) {
        const __half* row = scales + group_row(block) + params.n;
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          second[f] = fragment_valid[f] ? __halves2half2(row[16 * f], row[16 * f + 8]) : __half2();
        }
      }
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        if (k_slice == 2 && two_groups) fold(operands.scales);
        #pragma unroll
        for (int f = 0; f < kFragmentsN; ++f) {
          uint32_t codes[4];
          dequantize_codes(word_of(operands.weights[f], k_slice), codes);
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
    Operands operands[kDepth];
    #pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      #pragma unroll
      for (int fm = 0; fm < kFragmentsM; ++fm)
        #pragma unroll
        for (int k_slice = 0; k_slice < 4; ++k_slice) {
          operands[d].activations[fm][k_slice][0] = 0;
          operands[d].activations[fm][k_slice][1] = 0;
        }
      #pragma unroll
      for (int f = 0; f < kFragmentsN; ++f) {
        operands[d].weights[f] = make_uint4(0, 0, 0, 0);
        operands[d].scales[f] = __half2();
      }
    }

    // Prologue: the first Depth k-blocks. Weights are constant inputs and are requested before
    // waiting for the previous kernel (programmatic dependent launch); activations, which that
    // kernel typically writes, after.
    #pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      if (begin + d < end) load_weights(operands[d], begin + d);
    }
    ptx::grid_dependency_wait();
    #pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      if (begin + d < end) load_activations_and_scales(operands[d], begin + d);
    }

    // k-block b lives in operands[(b - begin) % Depth]; the loop is unrolled by Depth so that
    // index is a compile-time constant (registers cannot be indexed at run time). A buffer is
    // refilled right after its k-block is multiplied, so Depth - 1 k-blocks stay in flight while
    // the warp works.
    for (int base = begin; base < end; base += kDepth) {
      #pragma unroll
      for (int d = 0; d < kDepth; ++d) {
        const int block = base + d;
        if (block < end) {
          compute(operands[d], block);
          const int next = block + kDepth;
          if (next < end) {
            load_weights(operands[d], next);
            load_activations_and_scales(operands[d], next);
          }
        }
      }
    }
  }
};

}  // namespace w4a16::streaming_sm80
