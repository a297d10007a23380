#pragma once
// The grouped (mixture-of-experts) tile scheduler: maps a thread block of a grouped launch to one
// (expert, m-tile, n-tile), from the per-expert row offsets on the device, so the host never
// needs the routing (no synchronization; a CUDA graph replays with any routing).
//
// The grid. Expert e with r_e rows needs ceil(r_e / TileM) m-tiles, and
//   sum_e ceil(r_e / TileM) <= floor(rows / TileM) + min(E, rows)
// (each ceil exceeds its floor by at most 1, and only for an expert with rows), so the host, which
// knows rows but not how they are spread, launches m_slots = floor(rows / TileM) + min(E, rows)
// m-tile slots times the n-tiles. Block b takes slot b / n_tiles and n-tile b % n_tiles (an
// expert's n-tiles are neighbours, so a wave works on few experts at a time); the slots count the
// experts' m-tiles in expert order, and a slot past the last tile exits at once. Experts without
// rows own no slot: their weights are never read.
//
// Finding the slot's expert: warp 0 walks the offsets 32 experts at a time, each lane one expert,
// a warp-wide prefix sum of the m-tile counts, and a ballot for the lane whose range holds the
// slot: E / 32 rounds of two loads and ~15 instructions, before the mainloop's first copy. The
// offsets are clamped into [0, rows] and made nondecreasing on the way, so offsets that break the
// contract (expert_offsets[0] = 0, nondecreasing, expert_offsets[E] = rows) give wrong rows but
// never an access outside A or C.

#include <cstdint>

#include "kernels/fused/params.h"

namespace w4a16::fused {

struct GroupedTile {
  int expert;     // -1: the slot has no tile
  int first_row;  // the expert's first row of A and C
  int rows;       // the expert's rows
  int m_begin;    // the tile's first row, relative to first_row
};

// The tile of m-tile slot `m_slot`, computed by the 32 lanes of one warp (every lane returns it).
template <int kTileM>
__device__ __forceinline__ GroupedTile find_grouped_tile(const GroupedParams& grouped, int m_slot) {
  const int lane = threadIdx.x % 32;
  GroupedTile found{-1, 0, 0, 0};
  int slots_before = 0;  // m-tiles of the experts already walked
  int previous_end = 0;  // clamped end of the previous expert's rows
  for (int base = 0; base < grouped.experts; base += 32) {
    const int expert = base + lane;
    int first = 0, end = 0;
    if (expert < grouped.experts) {
      first = min(max(grouped.expert_offsets[expert], 0), grouped.rows);
      end = min(max(grouped.expert_offsets[expert + 1], first), grouped.rows);
    }
    // Disjoint and in order: an expert's rows start no earlier than every earlier expert's end
    // (a prefix maximum over the lanes, and over the rounds before). With valid offsets this
    // changes nothing; with broken ones it keeps the tile count within the grid's m_slots.
    int ends_so_far = end;
    #pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, ends_so_far, d);
      if (lane >= d) ends_so_far = max(ends_so_far, v);
    }
    const int earlier_end = max(previous_end, lane == 0 ? 0 : __shfl_up_sync(0xffffffffu, ends_so_far, 1));
    first = max(first, earlier_end);
    end = max(end, first);
    const int count = end - first;
    const int tiles = count / kTileM + (count % kTileM != 0);
    int inclusive = tiles;
    #pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += v;
    }
    const int begin = slots_before + inclusive - tiles;
    const bool mine = tiles > 0 && m_slot >= begin && m_slot < begin + tiles;
    const unsigned owner = __ballot_sync(0xffffffffu, mine);
    if (owner != 0) {
      const int source = __ffs(owner) - 1;
      found.expert = __shfl_sync(0xffffffffu, expert, source);
      found.first_row = __shfl_sync(0xffffffffu, first, source);
      found.rows = __shfl_sync(0xffffffffu, count, source);
      found.m_begin = (m_slot - __shfl_sync(0xffffffffu, begin, source)) * kTileM;
      return found;
    }
    slots_before += __shfl_sync(0xffffffffu, inclusive, 31);
    previous_end = max(previous_end, __shfl_sync(0xffffffffu, ends_so_far, 31));
  }
  return found;
}

}  // namespace w4a16::fused
