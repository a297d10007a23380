#pragma once
// The SM80-family packed int4 weight layout, shared by the host packer and the GPU kernels.
//
// W is [n][k] int4 (nn.Linear: out x in). It is cut into tiles of 16 rows (n) x 64 columns (k);
// tile (row_block, k_block) lives at byte offset (row_block * (k / 64) + k_block) * 512, so a warp
// streaming one row block along k reads consecutive 512-byte chunks.
//
// Inside a tile, lane L (0..31) of a warp owns 16 bytes at offset 16 * L: four 32-bit words, one per
// 16-wide k slice (word j covers tile columns 16j .. 16j+15). Each word holds exactly the eight
// values lane L needs for the A operand of one mma.m16n8k16 in which the weights sit on the 16-row
// side: with r = L / 4 and c = 2 * (L % 4), the fragment registers are
//   a0 = (W[r][c], W[r][c+1])   a1 = (W[r+8][c], W[r+8][c+1])
//   a2 = (W[r][c+8], W[r][c+9]) a3 = (W[r+8][c+8], W[r+8][c+9])
// The same registers are the B fragments of two m16n8k16 with the weights on the 8-column side, so
// one packed buffer serves either operand order.
//
// Nibble order inside a word: nibble slot s occupies bits [4s, 4s+4). Register a_i takes its low half
// from slot i and its high half from slot i + 4:
//     slot:   7    6    5    4    3    2    1    0
//     value: a3.y a2.y a1.y a0.y a3.x a2.x a1.x a0.x
// Why: register a_i's two values sit 16 bits apart, at the bottom of each 16-bit half of
// (word >> 4i), so masking with 0x000f000f and OR-ing in an exponent turns both into a 16-bit
// float pair at once, with no per-element shifts (the per-type magic numbers: kernels/common/
// element.cuh).
// The nibble is the stored code q in [0, 15]; what it means (s * (q - 8), or s * (q - z)) is the
// quant op's business (w4a16/format.h), not the layout's.

#if defined(__CUDACC__)
#define W4A16_HOST_DEVICE __host__ __device__
#else
#define W4A16_HOST_DEVICE
#endif

namespace w4a16::layout {

constexpr int kTileRows = 16;         // n per tile
constexpr int kTileCols = 64;         // k per tile
constexpr int kTileBytes = 512;       // 16 * 64 / 2

// Tile-local position (row, column) of nibble `slot` (0..7) in word `word` (0..3) of lane `lane`.
struct TilePosition {
  int row;
  int col;
};
W4A16_HOST_DEVICE constexpr TilePosition nibble_position(int lane, int word, int slot) {
  const int fragment_register = slot & 3;  // a0..a3
  const int high_half = slot >> 2;         // .x or .y of that register
  const int row = lane / 4 + ((fragment_register & 1) ? 8 : 0);
  const int col = 16 * word + 2 * (lane % 4) + ((fragment_register & 2) ? 8 : 0) + high_half;
  return {row, col};
}

W4A16_HOST_DEVICE constexpr long long tile_offset_bytes(int row_block, int k_block, int k) {
  return (static_cast<long long>(row_block) * (k / kTileCols) + k_block) * kTileBytes;
}

}  // namespace w4a16::layout
