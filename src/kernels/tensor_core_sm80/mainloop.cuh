#pragma once
// The multistage mainloop: cp.async copies k-block after k-block of weights, activations and scales
// into a ring of shared-memory stages while the warps dequantize and multiply the oldest one.
//
// Operand roles: the weights are the mma's A operand (16 output channels x 16 k) and the
// activations its B operand (16 k x 8 rows of A). Putting the weights on the 16-row side means no
// mma rows are wasted at m <= 8 (decode), and one packed word per lane is exactly one A fragment.

#include <cstdint>

#include "common/packed_layout.h"
#include "kernels/common/dequant.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/tensor_core_sm80/tile_scheduler.cuh"

namespace w4a16::tensor_core_sm80 {

template <class Tile>
struct Mainloop {
  using Accumulators = float[Tile::kFragmentsN][Tile::kFragmentsM][4];

  struct StagePointers {
    uint8_t* weights;      // kWeightBytes: (TileN / 16) packed tiles of 512 bytes
    uint8_t* activations;  // kActivationBytes: TileM rows of 128 bytes, swizzled (see below)
    __half* scales;        // two rows of TileN
  };

  static __device__ __forceinline__ StagePointers stage(uint8_t* shared, int index) {
    uint8_t* base = shared + index * Tile::kStageBytes;
    return {base, base + Tile::kWeightBytes,
            reinterpret_cast<__half*>(base + Tile::kWeightBytes + Tile::kActivationBytes)};
  }

  // Activation rows are 128 bytes = 8 chunks of 16 bytes. ldmatrix reads the same chunk column of 8
  // consecutive rows at once; unswizzled, those 8 addresses are 128 bytes apart and all hit the same
  // 4 banks (8-way conflict). Storing chunk c of row r at chunk position c ^ (r % 8) spreads them
  // over all 32 banks, for the cp.async writes as well as the ldmatrix reads.
  static __device__ __forceinline__ int swizzled_offset(int row, int chunk) {
    return row * Tile::kActivationRowBytes + ((chunk ^ (row & 7)) << 4);
  }

  // Issues the copies of k-block `k_block` into `stage`. Rows past m and channels past n are
  // zero-filled (cp.async with source size 0), so the compute loop needs no edge checks.
  static __device__ __forceinline__ void load_stage(const Params& params, const TileWork& work, int k_block,
                                                    const StagePointers& stage) {
    const int thread = threadIdx.x;
    const uint8_t* packed = static_cast<const uint8_t*>(params.packed_weights);
    const int row_blocks = params.n / layout::kTileRows;

    // Weights: (TileN / 16) tiles of 512 contiguous bytes, 32 chunks each.
    constexpr int kWeightChunks = Tile::kWeightBytes / 16;
    #pragma unroll
    for (int chunk = thread; chunk < kWeightChunks; chunk += Tile::kThreads) {
      const int row_block = work.n_begin / layout::kTileRows + chunk / 32;
      const bool valid = row_block < row_blocks;
      const uint8_t* source =
          valid ? packed + layout::tile_offset_bytes(row_block, k_block, params.k) + (chunk % 32) * 16 : packed;
      ptx::cp_async_16(stage.weights + chunk * 16, source, valid);
    }

    // Activations: TileM rows x 8 chunks.
    constexpr int kActivationChunks = Tile::kTileM * 8;
    #pragma unroll
    for (int chunk = thread; chunk < kActivationChunks; chunk += Tile::kThreads) {
      const int row = chunk / 8, column_chunk = chunk % 8;
      const int global_row = work.m_begin + row;
      const bool valid = global_row < params.m;
      const __half* source =
          valid ? params.a + static_cast<long long>(global_row) * params.k + k_block * Tile::kTileK + column_chunk * 8
                : params.a;
      ptx::cp_async_16(stage.activations + swizzled_offset(row, column_chunk), source, valid);
    }

    // Scales: the group row(s) covering this k-block, TileN channels each (8 per chunk).
    const int scale_rows = params.group_size == 32 ? 2 : 1;
    const int first_group = k_block * Tile::kTileK / params.group_size;
    constexpr int kChunksPerScaleRow = Tile::kTileN / 8;
    for (int chunk = thread; chunk < scale_rows * kChunksPerScaleRow; chunk += Tile::kThreads) {
      const int scale_row = chunk / kChunksPerScaleRow;
      const int channel = work.n_begin + (chunk % kChunksPerScaleRow) * 8;
      const bool valid = channel < params.n;
      const __half* source =
          valid ? params.scales + static_cast<long long>(first_group + scale_row) * params.n + channel : params.scales;
      ptx::cp_async_16(stage.scales + scale_row * Tile::kTileN + (chunk % kChunksPerScaleRow) * 8, source, valid);
    }
  }

  // Multiplies one stage into the accumulators.
  static __device__ __forceinline__ void compute_stage(const Params& params, const StagePointers& stage, int warp_m,
                                                       int warp_n, Accumulators& accumulators) {
    const int lane = threadIdx.x % 32;
    // Each lane's 16 packed bytes of each of its weight tiles: four words = four 16-wide k slices.
    uint4 packed[Tile::kFragmentsN];
    #pragma unroll
    for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
      const int tile_in_stage = warp_n * Tile::kFragmentsN + fragment_n;
      packed[fragment_n] = reinterpret_cast<const uint4*>(stage.weights)[tile_in_stage * 32 + lane];
    }

    const bool two_groups = params.group_size == 32;
    #pragma unroll
    for (int k_slice = 0; k_slice < 4; ++k_slice) {
      // Activation fragments for this 16-wide k slice via ldmatrix: matrix 2j covers k 0..7 and
      // matrix 2j+1 k 8..15 of 8 rows, which is exactly the mma's B fragment {b0, b1}.
      uint32_t activation[Tile::kFragmentsM][2];
      const int warp_row = warp_m * Tile::kWarpTileM;
      if constexpr (Tile::kFragmentsM % 2 == 0) {
        #pragma unroll
        for (int pair = 0; pair < Tile::kFragmentsM / 2; ++pair) {
          const int matrix = lane / 8;
          const int row = warp_row + pair * 16 + (matrix / 2) * 8 + lane % 8;
          uint32_t registers[4];
          ptx::ldmatrix_x4(registers, stage.activations + swizzled_offset(row, 2 * k_slice + (matrix & 1)));
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
          ptx::ldmatrix_x2(activation[fragment_m], stage.activations + swizzled_offset(row, 2 * k_slice + matrix));
        }
      }

      const __half* scale_row = stage.scales + ((two_groups && k_slice >= 2) ? Tile::kTileN : 0);
      #pragma unroll
      for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
        const int channel = warp_n * Tile::kWarpTileN + fragment_n * 16 + lane / 4;
        const __half2 scale_low = __half2half2(scale_row[channel]);
        const __half2 scale_high = __half2half2(scale_row[channel + 8]);
        const uint32_t word = k_slice == 0   ? packed[fragment_n].x
                              : k_slice == 1 ? packed[fragment_n].y
                              : k_slice == 2 ? packed[fragment_n].z
                                             : packed[fragment_n].w;
        uint32_t weights[4];
        dequantize_fragment(word, scale_low, scale_high, weights);
        #pragma unroll
        for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
          ptx::mma_m16n8k16(accumulators[fragment_n][fragment_m], weights, activation[fragment_m]);
        }
      }
    }
  }

  // The pipeline. Stage s of the ring holds k-block (k_block_begin + i) with i % Stages == s.
  // Invariant at the top of iteration i: blocks i .. i + Stages - 2 have been issued (one commit
  // group each, empty groups past the end keep the count uniform), so waiting until at most
  // Stages - 2 groups are pending means block i has landed.
  static __device__ __forceinline__ void run(const Params& params, const TileWork& work, uint8_t* shared, int warp_m,
                                             int warp_n, Accumulators& accumulators) {
    #pragma unroll
    for (int n = 0; n < Tile::kFragmentsN; ++n)
      #pragma unroll
      for (int m = 0; m < Tile::kFragmentsM; ++m)
        #pragma unroll
        for (int i = 0; i < 4; ++i) accumulators[n][m][i] = 0.0f;

    const int k_blocks = work.k_block_end - work.k_block_begin;
    #pragma unroll
    for (int s = 0; s < Tile::kStages - 1; ++s) {
      if (s < k_blocks) load_stage(params, work, work.k_block_begin + s, stage(shared, s));
      ptx::cp_async_commit();
    }

    for (int i = 0; i < k_blocks; ++i) {
      ptx::cp_async_wait<Tile::kStages - 2>();
      // Makes block i visible to every warp, and guarantees every warp has finished computing on
      // the stage the next load overwrites (it held block i - 1).
      __syncthreads();
      const int next = i + Tile::kStages - 1;
      if (next < k_blocks) load_stage(params, work, work.k_block_begin + next, stage(shared, next % Tile::kStages));
      ptx::cp_async_commit();
      compute_stage(params, stage(shared, i % Tile::kStages), warp_m, warp_n, accumulators);
    }
    ptx::cp_async_wait<0>();
  }
};

}  // namespace w4a16::tensor_core_sm80
