#pragma once
// Host side of the warp-specialized kernel's loads: the TMA descriptors (CUtensorMap) of its three
// operands. Plain C++; the driver entry point is looked up through the runtime, so the library
// does not link libcuda (a machine without a GPU driver can still load it). Encoding is pure host
// work, constant per call: no device access, no allocation.

#include <cuda.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace w4a16::wgmma_sm90 {

struct TensorMaps {
  CUtensorMap activations;  // A
  CUtensorMap weights;      // the packed int4 weights
  CUtensorMap scales;       // the group scales
};

// A ([m][k] fp16, row-major) as boxes of 64 columns (128 bytes, one k-block) x box_rows rows,
// written to shared memory with the 128-byte swizzle (16-byte chunk c of row r lands at chunk
// c ^ (r % 8)): the K-major layout wgmma reads its B operand in. Rows past m read as zeros.
//
// The packed weights (common/packed_layout.h) as a 3-D array of 32-bit words: [n / 16 row blocks]
// [k / 64 k-blocks][128 words = one 512-byte tile]; a box is one k-block of box_row_blocks row
// blocks, landing as consecutive 512-byte tiles (the slot layout). Row blocks past n read as zeros.
//
// The scales ([k / group][n] fp16) as boxes of box_channels channels x box_groups rows (2 for
// group 32, where a 64-wide k-block spans two groups; else 1). Channels past n read as zeros.
// Whether the driver offers tensor-map encoding (cuTensorMapEncodeTiled, CUDA 12+ drivers).
bool tensor_maps_supported();

// cudaErrorNotSupported without tensor-map encoding; cudaErrorInvalidValue when the driver rejects a
// descriptor (not expected for any shape the runner admits).
cudaError_t encode_tensor_maps(TensorMaps* maps, const __half* a, const void* packed_weights, const __half* scales,
                               int m, int n, int k, int group_size, int box_rows, int box_row_blocks);

}  // namespace w4a16::wgmma_sm90
