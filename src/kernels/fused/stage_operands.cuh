#pragma once
// How the mma.sync mainloops (multistage, streaming) lay out and read a k-block's operands in
// shared memory: the swizzled activation rows read back with ldmatrix, each lane's offsets into a
// stage, and the packed word of a 16-wide k slice. Shared by both mainloops, owned by neither.

#include <cstdint>

#include "common/packed_layout.h"
#include "kernels/common/ptx.cuh"

namespace w4a16::fused {

template <class Tile>
struct StageOperands {
  // Activation rows are 128 bytes = 8 chunks of 16 bytes. ldmatrix reads the same chunk column of 8
  // consecutive rows at once; unswizzled, those 8 addresses are 128 bytes apart and all hit the same
  // 4 banks (8-way conflict). Storing chunk c of row r at chunk position c ^ (r % 8) spreads them
  // over all 32 banks, for the cp.async writes as well as the ldmatrix reads.
  static __device__ __forceinline__ int swizzled_offset(int row, int chunk) {
    return row * Tile::kActivationRowBytes + ((chunk ^ (row & 7)) << 4);
  }

  // Per-lane shared-memory offsets inside a slot, fixed for the whole k loop.
  struct LaneOffsets {
    uint32_t activation[4];  // ldmatrix row address of k slice 0..3 (of the first fragment or pair)
    int weights;             // this lane's 16 bytes of the warp's first weight tile
    int scales;              // byte offset of channel (lane / 4) of the warp's first fragment

    __device__ __forceinline__ LaneOffsets(int warp_m, int warp_n) {
      const int lane = threadIdx.x % 32;
      // ldmatrix: lane L supplies row L % 8 of matrix L / 8. Matrix bit 0 picks the k half (k 0..7
      // or 8..15) of the slice; with x4, bit 1 picks the second 8-row fragment. Rows of a fragment
      // pair start at a multiple of 8, so row % 8 == lane % 8 and the swizzle (see
      // swizzled_offset) of slice s is just (2s + matrix bit 0) ^ (lane % 8); later pairs add a
      // constant 16 rows, which folds into the instruction's immediate offset.
      const int row = warp_m * Tile::kWarpTileM + (Tile::kFragmentsM % 2 == 0 ? (lane / 16) * 8 : 0) + lane % 8;
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        activation[k_slice] = swizzled_offset(row, 2 * k_slice + ((lane / 8) & 1));
      }
      weights = (warp_n * Tile::kFragmentsN * 32 + lane) * 16;
      scales = (warp_n * Tile::kWarpTileN + lane / 4) * 2;
      // Left to itself ptxas recomputes these from threadIdx in every iteration (it trades the
      // registers for ~15 instructions per k-block); an opaque move pins them in registers.
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) ptx::pin(activation[k_slice]);
      ptx::pin(weights);
      ptx::pin(scales);
    }
  };

  // Activation fragments for one 16-wide k slice via ldmatrix: matrix 2j covers k 0..7 and matrix
  // 2j+1 k 8..15 of 8 rows, which is exactly the mma's B fragment {b0, b1}. `activations` is the
  // slot's activation tile as a shared-space address.
  static __device__ __forceinline__ void load_activations(uint32_t activations, const LaneOffsets& lane_offsets,
                                                          int k_slice, uint32_t (&activation)[Tile::kFragmentsM][2]) {
    const uint32_t address = activations + lane_offsets.activation[k_slice];
    if constexpr (Tile::kFragmentsM % 2 == 0) {
      #pragma unroll
      for (int pair = 0; pair < Tile::kFragmentsM / 2; ++pair) {
        uint32_t registers[4];
        ptx::ldmatrix_x4(registers, address + pair * 16 * Tile::kActivationRowBytes);
        activation[2 * pair][0] = registers[0];
        activation[2 * pair][1] = registers[1];
        activation[2 * pair + 1][0] = registers[2];
        activation[2 * pair + 1][1] = registers[3];
      }
    } else {
      #pragma unroll
      for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
        ptx::ldmatrix_x2(activation[fragment_m], address + fragment_m * 8 * Tile::kActivationRowBytes);
      }
    }
  }

  static __device__ __forceinline__ uint32_t word_of(const uint4& packed, int k_slice) {
    return k_slice == 0 ? packed.x : k_slice == 1 ? packed.y : k_slice == 2 ? packed.z : packed.w;
  }
};

}  // namespace w4a16::fused
