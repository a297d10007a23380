#pragma once
// Maps a thread block to its work: one (m, n) output tile and one slice of the k-blocks.

#include "kernels/fused/params.h"

namespace w4a16::fused {

struct TileWork {
  int m_begin;        // first activation row
  int n_begin;        // first output channel
  int k_block_begin;  // [k_block_begin, k_block_end) in units of 64 columns
  int k_block_end;
  int split;          // which split-K slice (0 when split_k == 1)
};

// The grid is one-dimensional over output tiles (y is unused, z = split-K slice). Blocks start in
// roughly blockIdx order, so the tiles resident at once are a contiguous run of indices; the order
// decides what that run shares through L2. Tiles are numbered in bands of kBandM m-tiles: inside a
// band the m-tile varies fastest, then the n-tile. A run of ~2 waves (~264 blocks on an H100) then
// covers 8 m-tiles x ~33 n-tiles, so each weight tile is fetched from HBM once per band instead
// of once per m-tile (at m = 4096 that is 4 instead of 32 passes over the weights), and the
// band's activation rows stay in L2 across its n-tiles. At decode sizes (one m-tile) the order is
// simply n-tile after n-tile.
constexpr int kBandM = 8;

// Output tile `index` of an m_tiles x n_tiles grid in the band order above, for the grouped
// scheduler. (schedule_tile spells the same arithmetic out: written through this helper, its
// prologue compiled to a slightly different instruction sequence, and the dense kernels' code is
// kept exactly as measured.)
struct BandedTile {
  int m_tile, n_tile;
};
// (`index` unsigned, as blockIdx.x is: the divisions are unsigned, which are cheaper.)
__device__ __forceinline__ BandedTile banded_tile(unsigned index, int m_tiles, int n_tiles) {
  const int tiles_per_band = kBandM * n_tiles;
  const int band = index / tiles_per_band, in_band = index % tiles_per_band;
  const int band_first_m = band * kBandM;
  const int band_height = min(kBandM, m_tiles - band_first_m);
  return {band_first_m + in_band % band_height, in_band / band_height};
}

// kKBlocksPerUnit: the granularity split-K deals k out in (the mainloop's unit of work along k:
// one k-block, or two for warp-specialized tiles, whose slots hold two).
template <class Tile, int kKBlocksPerUnit>
__device__ __forceinline__ TileWork schedule_tile(const Params& params) {
  const int k_blocks = params.k / Tile::kBlockK;
  // n / tile + (n % tile != 0): rounding up without forming n + tile - 1, which can overflow an int.
  const int n_tiles = params.n / Tile::kTileN + (params.n % Tile::kTileN != 0);
  const int m_tiles = params.m / Tile::kTileM + (params.m % Tile::kTileM != 0);
  const int split = blockIdx.z;
  TileWork work;
  // Decode (one m-tile) and no split-K are the common cases, and the general path costs a few
  // integer divisions by run-time values (~40 dependent cycles each) before the first copy can
  // be issued, which at 1x4096x4096 is a visible part of a 6 us call. So they take a shortcut.
  if (m_tiles == 1) {
    work.m_begin = 0;
    work.n_begin = blockIdx.x * Tile::kTileN;
  } else {
    const int tiles_per_band = kBandM * n_tiles;
    const int band = blockIdx.x / tiles_per_band, in_band = blockIdx.x % tiles_per_band;
    const int band_first_m = band * kBandM;
    const int band_height = min(kBandM, m_tiles - band_first_m);
    work.m_begin = (band_first_m + in_band % band_height) * Tile::kTileM;
    work.n_begin = (in_band / band_height) * Tile::kTileN;
  }
  if (params.split_k == 1) {
    work.k_block_begin = 0;
    work.k_block_end = k_blocks;
  } else {
    // The k-blocks are dealt out as evenly as integers allow, in units of kKBlocksPerUnit
    // (warp-specialized slots must start on an even k-block so that a group of 128 never
    // straddles one). No slice is empty as long as split_k <= the number of units; a slice that
    // is empty anyway (split_k above the number of two-k-block slots on a warp-specialized tile)
    // adds zeros, which is still correct.
    constexpr int kUnit = kKBlocksPerUnit;
    const int units = k_blocks / kUnit + (k_blocks % kUnit != 0);
    work.k_block_begin = min(k_blocks, static_cast<int>((static_cast<long long>(split) * units) / params.split_k) * kUnit);
    work.k_block_end =
        min(k_blocks, static_cast<int>((static_cast<long long>(split + 1) * units) / params.split_k) * kUnit);
  }
  work.split = split;
  return work;
}

template <class Tile>
inline dim3 grid_shape(const Params& params) {
  const long long n_tiles = (static_cast<long long>(params.n) + Tile::kTileN - 1) / Tile::kTileN;
  const long long m_tiles = (static_cast<long long>(params.m) + Tile::kTileM - 1) / Tile::kTileM;
  return dim3(static_cast<unsigned>(n_tiles * m_tiles), 1, params.split_k);
}

}  // namespace w4a16::fused
