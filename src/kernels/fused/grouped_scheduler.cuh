#pragma once
// The tile scheduler of the grouped (mixture-of-experts) launch: maps a thread block to one
// expert's (m-tile, n-tile), reading the per-expert row offsets the routing left on the device.
//
// The grid is m_slots x n_tiles blocks in the dense kernels' band order (tile_scheduler.cuh), an
// "m-slot" standing for one (expert, m-tile) pair: slot s is the s-th m-tile when the experts'
// m-tiles are laid end to end in expert order (expert 0's ceil(r_0 / TileM) tiles, then expert
// 1's, ...). Experts without rows own no slot, so their weights are never read; the slots past the
// last pair (the grid is sized for the worst case, GroupedParams::m_slots) return at once, and in
// band order they are the grid's last blocks, launched after every block with work.
//
// Finding slot s's expert is a prefix sum over the experts' tile counts. Every warp computes it on
// its own (no shared memory, no barrier, so it composes with any mainloop), 32 experts per lane
// sweep, the offsets of kChunks sweeps loaded before the first is summed: one round trip to L2
// covers 32 * kChunks experts (256; models have 8 to 256), where a load per sweep would cost one
// each. The offsets are clamped to [0, rows], so broken routing (decreasing or out-of-range
// offsets) gives wrong rows, never an access outside A or C.

#include "kernels/fused/params.h"
#include "kernels/fused/tile_scheduler.cuh"

namespace w4a16::fused {

struct GroupedTile {
  int expert;
  int row_begin;  // the expert's first row of A and C
  int rows;       // its row count (> 0)
  int m_begin;    // the tile's first row, relative to row_begin
  int n_begin;
};

// False when this block's slot is past the last (expert, m-tile) pair: the block has no work.
// The result is the same in every warp of the block.
template <class Tile>
__device__ __forceinline__ bool schedule_grouped_tile(const GroupedParams& grouped, GroupedTile* tile) {
  constexpr int kChunks = 8;
  const int rows_total = grouped.base.m;
  const int n_tiles = grouped.base.n / Tile::kTileN + (grouped.base.n % Tile::kTileN != 0);
  const BandedTile banded = banded_tile(blockIdx.x, grouped.m_slots, n_tiles);
  const int slot = banded.m_tile;
  tile->n_begin = banded.n_tile * Tile::kTileN;

  const int lane = threadIdx.x % 32;
  int slots_before = 0;  // tiles of the experts before this sweep group
  for (int first = 0; first < grouped.experts; first += 32 * kChunks) {
    // offsets[c] = expert_offsets[first + 32 c + lane], clamped; one past the array reads as
    // rows_total (never used: such experts do not exist).
    int offsets[kChunks + 1];
    #pragma unroll
    for (int c = 0; c <= kChunks; ++c) {
      const int index = first + 32 * c + lane;
      const int offset = index <= grouped.experts ? __ldg(grouped.expert_offsets + index) : rows_total;
      offsets[c] = min(max(offset, 0), rows_total);
    }
    // Every lane runs every step below (the shuffles take the full mask), found or not; `found`
    // is warp-uniform (it comes from a ballot), so the loop exits in every lane together.
    bool found = false;
    #pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int expert = first + 32 * c + lane;
      // The expert's end is the next lane's offset; lane 31's is lane 0's of the next sweep.
      const int next_in_sweep = __shfl_down_sync(0xffffffffu, offsets[c], 1);
      const int next_sweep_first = __shfl_sync(0xffffffffu, offsets[c + 1], 0);
      const int end = lane == 31 ? next_sweep_first : next_in_sweep;
      const int rows = expert < grouped.experts ? max(end - offsets[c], 0) : 0;
      const int tiles = rows / Tile::kTileM + (rows % Tile::kTileM != 0);
      int inclusive = tiles;  // inclusive prefix sum of the tiles over the lanes
      #pragma unroll
      for (int step = 1; step < 32; step *= 2) {
        const int below = __shfl_up_sync(0xffffffffu, inclusive, step);
        if (lane >= step) inclusive += below;
      }
      const int exclusive = slots_before + inclusive - tiles;
      const unsigned owner = __ballot_sync(0xffffffffu, !found && tiles > 0 && slot >= exclusive && slot < exclusive + tiles);
      if (owner != 0) {
        const int source = __ffs(owner) - 1;
        tile->expert = __shfl_sync(0xffffffffu, expert, source);
        tile->row_begin = __shfl_sync(0xffffffffu, offsets[c], source);
        tile->rows = __shfl_sync(0xffffffffu, rows, source);
        tile->m_begin = (slot - __shfl_sync(0xffffffffu, exclusive, source)) * Tile::kTileM;
        found = true;
      }
      slots_before += __shfl_sync(0xffffffffu, inclusive, 31);
    }
    if (found) return true;
  }
  return false;
}

}  // namespace w4a16::fused
