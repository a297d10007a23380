// Packing int4 codes into the SM80-family layout (src/common/packed_layout.h) and back.
#include <string>

#include "common/packed_layout.h"
#include "w4a16/quantize.h"

namespace w4a16 {

namespace {

Status check_pack_shape(int n, int k) {
  if (n <= 0 || k <= 0) return Status(StatusCode::kInvalidArgument, "pack: n and k must be positive");
  if (n % layout::kTileRows != 0 || k % layout::kTileCols != 0) {
    return Status(StatusCode::kUnsupportedShape, "pack: n must be a multiple of 16 and k of 64, got n = " +
                                                     std::to_string(n) + ", k = " + std::to_string(k));
  }
  return Status::success();
}

// Calls visit(code_index, byte_index, shift) for every nibble of the packed buffer.
template <typename Visit>
void for_each_nibble(int n, int k, Visit visit) {
  for (int row_block = 0; row_block < n / layout::kTileRows; ++row_block) {
    for (int k_block = 0; k_block < k / layout::kTileCols; ++k_block) {
      const size_t tile = size_t(layout::tile_offset_bytes(row_block, k_block, k));
      for (int lane = 0; lane < 32; ++lane) {
        for (int word = 0; word < 4; ++word) {
          for (int slot = 0; slot < 8; ++slot) {
            const layout::TilePosition p = layout::nibble_position(lane, word, slot);
            const size_t code_index = size_t(row_block * layout::kTileRows + p.row) * k +
                                      size_t(k_block) * layout::kTileCols + p.col;
            // Words are little-endian: slot s sits in byte s / 2, low nibble when s is even.
            const size_t byte_index = tile + size_t(lane) * 16 + size_t(word) * 4 + size_t(slot / 2);
            visit(code_index, byte_index, (slot % 2) * 4);
          }
        }
      }
    }
  }
}

}  // namespace

size_t packed_weight_bytes(int n, int k) { return size_t(n) * size_t(k) / 2; }

Status pack_weights(const uint8_t* codes, int n, int k, std::vector<uint8_t>* packed) {
  if (codes == nullptr || packed == nullptr) return Status(StatusCode::kInvalidArgument, "pack: null pointer");
  if (Status s = check_pack_shape(n, k); !s.ok()) return s;
  for (size_t i = 0; i < size_t(n) * k; ++i) {
    if (codes[i] > kMaxCode) {
      return Status(StatusCode::kInvalidArgument, "pack: code " + std::to_string(int(codes[i])) + " at index " +
                                                       std::to_string(i) + " is outside [0, 15]");
    }
  }
  packed->assign(packed_weight_bytes(n, k), 0);
  uint8_t* out = packed->data();
  for_each_nibble(n, k, [&](size_t code_index, size_t byte_index, int shift) {
    out[byte_index] |= uint8_t(codes[code_index] << shift);  // the stored nibble is the code
  });
  return Status::success();
}

Status pack_weights(const QuantizedWeights& weights, std::vector<uint8_t>* packed) {
  if (weights.codes.size() != size_t(weights.n) * weights.k) {
    return Status(StatusCode::kInvalidArgument, "pack: codes.size() does not match n * k");
  }
  return pack_weights(weights.codes.data(), weights.n, weights.k, packed);
}

Status unpack_weights(const uint8_t* packed, int n, int k, std::vector<uint8_t>* codes) {
  if (packed == nullptr || codes == nullptr) return Status(StatusCode::kInvalidArgument, "unpack: null pointer");
  if (Status s = check_pack_shape(n, k); !s.ok()) return s;
  codes->assign(size_t(n) * k, 0);
  uint8_t* out = codes->data();
  for_each_nibble(n, k, [&](size_t code_index, size_t byte_index, int shift) {
    out[code_index] = uint8_t((packed[byte_index] >> shift) & 0xF);
  });
  return Status::success();
}

}  // namespace w4a16
