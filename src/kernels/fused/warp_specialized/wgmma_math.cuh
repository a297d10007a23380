#pragma once
// The math step of the warp-specialized family: one k-block of a pipeline slot multiplied with
// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a) instead of mma.sync. The tile scheduler,
// split-K and epilogue around it are the fused skeleton's; the pipeline is mainloop.cuh.
//
// Operands. A warpgroup (4 consecutive warps along n) computes 64 output channels x N activation
// rows (N = the warp tile's m, 8..256) per wgmma.m64nNk16, and with 32 channels per warp two such
// "halves" per k slice (see kHalves):
//  - A = weights, from registers. wgmma's register fragment for A gives warp w of the warpgroup rows
//    16w..16w+15 in exactly mma.m16n8k16's A layout, which is what one packed word per lane
//    dequantizes to (common/packed_layout.h): the packed buffer needs no Hopper variant.
//  - B = activations, read by the tensor cores straight from the pipeline's shared-memory tile.
//    That tile is already in wgmma's canonical K-major layout with the 128-byte swizzle: rows of
//    64 16-bit elements = 128 bytes, 16-byte chunk c of row r stored at c ^ (r % 8) (what TMA's 128-byte
//    swizzle writes, tensor_maps.h), 8-row groups 1024 bytes apart; it only has to start on a
//    1024-byte boundary (Tile pads slots).
//  - D: m64nNk16's accumulator fragment gives warp w, per 8-column chunk j, the same 4 values
//    (rows 16w + lane/4 (+8) of the 64-row A, activation rows 8j + 2 (lane % 4) (+1)) as
//    mma.m16n8k16's C, so the accumulators keep the mma.sync families' [FragmentsN][N/8][4] shape
//    and its epilogue.
//  - Element types: the instruction's .f16/.bf16 form (the Atom below); everything else about the
//    type is the element traits' (common/element.cuh), dequantization the quant op's.

#include <cstdint>
#include <utility>

#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/packed_layout.h"
#include "kernels/common/dequant.cuh"
#include "kernels/common/ptx.cuh"

namespace w4a16::fused {

namespace gmma = cute::SM90::GMMA;

// The wgmma atom for a warp tile of N activation rows: 64 x N x 16, fp32 accumulators, A (the
// weights) from registers, both operands K-major; one per element type.
template <int N, class Scalar> struct Atom;
template <> struct Atom<8, __half> { using type = gmma::MMA_64x8x16_F32F16F16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<16, __half> { using type = gmma::MMA_64x16x16_F32F16F16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<32, __half> { using type = gmma::MMA_64x32x16_F32F16F16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<64, __half> { using type = gmma::MMA_64x64x16_F32F16F16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<128, __half> { using type = gmma::MMA_64x128x16_F32F16F16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<256, __half> { using type = gmma::MMA_64x256x16_F32F16F16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<8, __nv_bfloat16> { using type = gmma::MMA_64x8x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<16, __nv_bfloat16> { using type = gmma::MMA_64x16x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<32, __nv_bfloat16> { using type = gmma::MMA_64x32x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<64, __nv_bfloat16> { using type = gmma::MMA_64x64x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<128, __nv_bfloat16> { using type = gmma::MMA_64x128x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>; };
template <> struct Atom<256, __nv_bfloat16> { using type = gmma::MMA_64x256x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::K>; };

// Shared-memory descriptor of a K-major, 128-byte-swizzled operand starting at `address` (a
// shared-space address): stride 1024 bytes between 8-row groups; the leading-dimension offset is
// unused for swizzled K-major layouts (1 by convention). A 16-wide k slice s of the tile starts
// 32 * s bytes into each row: the hardware applies the swizzle to the absolute address bits, so
// stepping along k inside the 128-byte row is just a larger start address. The start address is
// the low 14-bit field in units of 16 bytes, and shared addresses stay below 256 KB, so adding
// (bytes >> 4) to a descriptor moves it without touching the other fields.
__device__ __forceinline__ uint64_t k_major_sw128_descriptor(uint32_t address) {
  cute::GmmaDescriptor descriptor;
  descriptor.bitfield.start_address_ = static_cast<uint16_t>((address & 0x3FFFF) >> 4);
  descriptor.bitfield.leading_byte_offset_ = 1;
  descriptor.bitfield.stride_byte_offset_ = 1024 >> 4;
  descriptor.bitfield.base_offset_ = 0;
  descriptor.bitfield.layout_type_ = 1;  // SWIZZLE_128B
  return descriptor.desc_;
}

// kKBlocksPerSlot: k-blocks per pipeline slot (the weights of one row block are that many 512-byte
// tiles apart from the next row block's).
template <class Tile, class Format, int kKBlocksPerSlot>
struct WgmmaMath {
  using E = typename Format::E;
  using Dequant = typename Format::Dequant;
  static constexpr int kN = Tile::kWarpTileM;
  static constexpr int kAccumulators = kN / 2;  // per thread and wgmma: 64 x N fp32 over 128 threads
  // Row blocks (16 channels) per warp. With two, a warpgroup covers 128 channels as two 64-row
  // wgmma "halves" sharing the activation operand: half f takes row block f of each warp's pair,
  // so warp w's 32 channels stay contiguous (its half-f accumulators are channels 32w + 16f + ...,
  // exactly the [FragmentsN][FragmentsM][4] layout of the mma.sync epilogue).
  static constexpr int kHalves = Tile::kFragmentsN;
  // Bytes from one of a warp's row blocks to the next in a slot ([row block][k-block][512 bytes]).
  static constexpr int kRowBlockStride = kKBlocksPerSlot * layout::kTileBytes;
  using MmaAtom = typename Atom<kN, typename Format::Scalar>::type;
  static_assert(kHalves == 1 || kHalves == 2, "a warp of a warpgroup owns 16 or 32 channels");
  static_assert(Tile::kWarpsN % 4 == 0, "warpgroups are 4 consecutive warps along n");

  template <size_t... I>
  static __device__ __forceinline__ void mma(const uint32_t (&a)[4], uint64_t b, float* d, std::index_sequence<I...>) {
    MmaAtom::fma(a[0], a[1], a[2], a[3], b, d[I]...);
  }

  // Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma.
  static __device__ __forceinline__ void fence(float* d) {
    #pragma unroll
    for (int i = 0; i < kAccumulators; ++i) cute::warpgroup_fence_operand(d[i]);
  }

  // Issues one k-block: dequantizes the lane's weights into `a`, one fragment per half and 16-wide
  // k slice, and multiplies them with the k-block's activation tile in 4 x kHalves wgmma,
  // committed as one group; then waits until at most kPendingGroups groups are in flight, so that
  // on return the group kPendingGroups k-blocks back has retired and its A registers and
  // activation tile are free again (see WarpSpecialized::consume). `a` must stay untouched until
  // then.
  // `weights` (shared-space address): the lane's 16 packed bytes of its first row block (the
  // second is kRowBlockStride further); `scales`: its channel's scale (channel + 8 is 16 bytes
  // further, the second row block 32 bytes), and for group 32 the second group's one scale row
  // (TileN elements) further; its zero point is kZeroOffset bytes after its scale;
  // `activations`: the descriptor of the k-block's activation tile at the warpgroup's first row
  // (k slice s starts 32 bytes, i.e. 2 descriptor units, further along each row).
  template <int kPendingGroups, int kZeroOffset, class Accumulators>
  static __device__ __forceinline__ void issue_k_block(uint32_t weights, uint32_t scales, bool two_groups,
                                                       uint64_t activations, uint32_t (&a)[kHalves][4][4],
                                                       Accumulators& accumulators) {
    #pragma unroll
    for (int half = 0; half < kHalves; ++half) {
      const uint4 packed = ptx::load_shared_128(weights + half * kRowBlockStride);
      const uint32_t half_scales = scales + half * 16 * 2;
      // Scale (and zero point) of channel r (low) or r + 8 (high) in group row `row`.
      auto value = [&](int offset, int row, bool high) {
        return E::from_bits(ptx::load_shared_u16(half_scales + offset + (row * Tile::kTileN + (high ? 8 : 0)) * 2));
      };
      auto terms = [&](int row) {
        if constexpr (Format::kZeros) {
          return Dequant::terms(value(0, row, false), value(0, row, true), value(kZeroOffset, row, false),
                                value(kZeroOffset, row, true));
        } else {
          return Dequant::terms(value(0, row, false), value(0, row, true));
        }
      };
      const typename Dequant::GroupTerms first = terms(0);
      const typename Dequant::GroupTerms second = two_groups ? terms(1) : first;
      #pragma unroll
      for (int k_slice = 0; k_slice < 4; ++k_slice) {
        const uint32_t word = k_slice == 0 ? packed.x : k_slice == 1 ? packed.y : k_slice == 2 ? packed.z : packed.w;
        Dequant::weights(word, k_slice >= 2 ? second : first, a[half][k_slice]);
      }
    }
    #pragma unroll
    for (int half = 0; half < kHalves; ++half) fence(&accumulators[half][0][0]);
    #pragma unroll
    for (int k_slice = 0; k_slice < 4; ++k_slice) {
      cute::warpgroup_arrive();  // wgmma.fence: the A registers written above are visible to wgmma
      #pragma unroll
      for (int half = 0; half < kHalves; ++half) {
        mma(a[half][k_slice], activations + 2 * k_slice, &accumulators[half][0][0],
            std::make_index_sequence<kAccumulators>{});
      }
    }
    cute::warpgroup_commit_batch();
    cute::warpgroup_wait<kPendingGroups>();
    #pragma unroll
    for (int half = 0; half < kHalves; ++half) fence(&accumulators[half][0][0]);
  }

  // After the last k-block: every wgmma done, accumulators readable.
  template <class Accumulators>
  static __device__ __forceinline__ void drain(Accumulators& accumulators) {
    cute::warpgroup_wait<0>();
    #pragma unroll
    for (int half = 0; half < kHalves; ++half) fence(&accumulators[half][0][0]);
  }
};

}  // namespace w4a16::fused
