#pragma once
// Maps a thread block to its work: one (m, n) output tile and one slice of the k-blocks.

#include "kernels/tensor_core_sm80/params.h"

namespace w4a16::tensor_core_sm80 {

struct TileWork {
  int m_begin;        // first activation row
  int n_begin;        // first output channel
  int k_block_begin;  // [k_block_begin, k_block_end) in units of 64 columns
  int k_block_end;
  int split;          // which split-K slice (0 when split_k == 1)
};

// Grid: x = n tiles (fastest, so neighbouring blocks share the activation tile in L2),
// y = m tiles, z = split-K slices. The k-blocks are dealt out as evenly as integers allow, so no
// slice is empty as long as split_k <= k / 64 (the runner checks that).
template <class Tile>
__device__ __forceinline__ TileWork schedule_tile(const Params& params) {
  const int k_blocks = params.k / Tile::kBlockK;
  const int split = blockIdx.z;
  TileWork work;
  work.n_begin = blockIdx.x * Tile::kTileN;
  work.m_begin = blockIdx.y * Tile::kTileM;
  work.k_block_begin = static_cast<int>((static_cast<long long>(split) * k_blocks) / params.split_k);
  work.k_block_end = static_cast<int>((static_cast<long long>(split + 1) * k_blocks) / params.split_k);
  work.split = split;
  return work;
}

template <class Tile>
inline dim3 grid_shape(const Params& params) {
  return dim3((params.n + Tile::kTileN - 1) / Tile::kTileN, (params.m + Tile::kTileM - 1) / Tile::kTileM,
              params.split_k);
}

}  // namespace w4a16::tensor_core_sm80
