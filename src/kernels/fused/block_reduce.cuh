#pragma once
// In-block split-K: the WarpsK warps of one output position each hold partial sums of their own
// k-blocks; this adds them up through shared memory after the mainloop, the same for every family
// that has WarpsK > 1.

#include <cstdint>

namespace w4a16::fused {

// Warps with warp_k > 0 park their accumulators in shared memory (the pipeline
// is drained, so its buffers are free); warp_k == 0 adds them in warp_k order, so the sum is the
// same on every run. Afterwards only warp_k == 0 holds the block's result.
// One float4 per lane and fragment (lane L's four values at 16 L: a warp's 128-bit accesses
// cover 512 contiguous bytes, the minimum of four wavefronts, conflict-free), and the k_warp
// loop unrolled, so warp 0's loads issue back to back and only its adds form a chain. At decode
// this is the call's tail after the last bytes land: the 16-warp streaming tile has 15 partners
// per output.
template <class Tile>
__device__ __forceinline__ void reduce_across_warps_k(uint8_t* shared, int warp_m, int warp_n, int warp_k,
                                                      float (&accumulators)[Tile::kFragmentsN][Tile::kFragmentsM][4]) {
  if constexpr (Tile::kWarpsK > 1) {
    const int lane = threadIdx.x % 32;
    const int position = warp_m * Tile::kWarpsN + warp_n;
    auto slot = [&](int k_warp, int fragment) {
      return reinterpret_cast<float4*>(shared) +
             ((k_warp - 1) * Tile::kWarpsM * Tile::kWarpsN + position) * (Tile::kAccumulatorsPerWarp / 4) +
             fragment * 32 + lane;
    };
    __syncthreads();  // every warp is done reading the pipeline buffers
    if (warp_k > 0) {
      #pragma unroll
      for (int n = 0; n < Tile::kFragmentsN; ++n)
        #pragma unroll
        for (int m = 0; m < Tile::kFragmentsM; ++m) {
          const float* values = accumulators[n][m];
          *slot(warp_k, n * Tile::kFragmentsM + m) = make_float4(values[0], values[1], values[2], values[3]);
        }
    }
    __syncthreads();
    if (warp_k == 0) {
      #pragma unroll
      for (int k_warp = 1; k_warp < Tile::kWarpsK; ++k_warp)
        #pragma unroll
        for (int n = 0; n < Tile::kFragmentsN; ++n)
          #pragma unroll
          for (int m = 0; m < Tile::kFragmentsM; ++m) {
            const float4 partner = *slot(k_warp, n * Tile::kFragmentsM + m);
            accumulators[n][m][0] += partner.x;
            accumulators[n][m][1] += partner.y;
            accumulators[n][m][2] += partner.z;
            accumulators[n][m][3] += partner.w;
          }
    }
  }
}

// Shared memory the reduction needs (it reuses the pipeline's, which is drained by then).
template <class Tile>
constexpr int reduction_bytes() {
  return (Tile::kWarpsK - 1) * Tile::kWarpsM * Tile::kWarpsN * Tile::kAccumulatorsPerWarp * 4;
}

}  // namespace w4a16::fused
