#pragma once
// Writes a warp's accumulators: C in the element type (alpha, bias and, for grouped launches, the
// row's routing weight applied: w * (alpha * acc + bias)) when the block owns the whole k range,
// otherwise the raw fp32 partial sums of its split-K slice for split_k_reduce to combine.
//
// Accumulator fragment of mma.m16n8k16 (weights on the 16-row side): lane L holds
//   [0], [1] -> channel r,     rows 2 * (L % 4) + {0, 1}      with r = L / 4
//   [2], [3] -> channel r + 8, the same rows

#include "kernels/common/element.cuh"
#include "kernels/fused/tile_scheduler.cuh"

namespace w4a16::fused {

template <class Tile, class E>
struct Epilogue {
  using Scalar = typename E::Scalar;
  template <class Accumulators>
  static __device__ __forceinline__ void store(const Params& params, const TileWork& work, int warp_m, int warp_n,
                                               const Accumulators& accumulators,
                                               const float* row_weights = nullptr) {
    const int lane = threadIdx.x % 32;
    #pragma unroll
    for (int fragment_n = 0; fragment_n < Tile::kFragmentsN; ++fragment_n) {
      const int channel_low = work.n_begin + warp_n * Tile::kWarpTileN + fragment_n * 16 + lane / 4;
      // n % 16 == 0, so a 16-channel fragment is either wholly inside n or wholly outside.
      if (channel_low >= params.n) continue;
      const int channels[2] = {channel_low, channel_low + 8};
      float bias[2] = {0.0f, 0.0f};
      if (params.split_k == 1 && params.bias != nullptr) {
        const Scalar* bias_values = static_cast<const Scalar*>(params.bias);
        bias[0] = E::to_float(bias_values[channels[0]]);
        bias[1] = E::to_float(bias_values[channels[1]]);
      }
      #pragma unroll
      for (int fragment_m = 0; fragment_m < Tile::kFragmentsM; ++fragment_m) {
        const int row_base = work.m_begin + warp_m * Tile::kWarpTileM + fragment_m * 8 + 2 * (lane % 4);
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = row_base + (i & 1);
          const int channel = channels[i >> 1];
          if (row >= params.m) continue;
          const long long index = static_cast<long long>(row) * params.n + channel;
          const float value = accumulators[fragment_n][fragment_m][i];
          if (params.split_k == 1) {
            float result = params.alpha * value + bias[i >> 1];
            if (row_weights != nullptr) result *= row_weights[row];  // grouped launches only
            static_cast<Scalar*>(params.c)[index] = E::from_float(result);
          } else {
            params.partials[static_cast<long long>(work.split) * params.m * params.n + index] = value;
          }
        }
      }
    }
  }
};

}  // namespace w4a16::fused
