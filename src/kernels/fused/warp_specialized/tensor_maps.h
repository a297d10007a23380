#pragma once
// Host side of the warp-specialized kernel's loads: the TMA descriptors (CUtensorMap) of its
// operands. Plain C++; the driver entry point is looked up through the runtime, so the library
// does not link libcuda (a machine without a GPU driver can still load it). Encoding is pure host
// work, constant per call: no device access, no allocation.

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "w4a16/format.h"

namespace w4a16::fused {

struct TensorMaps {
  CUtensorMap activations;  // A
  CUtensorMap weights;      // the packed int4 weights
  CUtensorMap scales;       // the group scales
  CUtensorMap zeros;        // the group zero points (encoded only when there are any)
};

// A ([m][k] row-major, 16-bit elements of `element`) as boxes of 64 columns (128 bytes, one k-block) x box_rows rows,
// written to shared memory with the 128-byte swizzle (16-byte chunk c of row r lands at chunk
// c ^ (r % 8)): the K-major layout wgmma reads its B operand in. Rows past m read as zeros.
//
// The packed weights (common/packed_layout.h) as a 3-D array of 32-bit words: [n / 16 row blocks]
// [k / 64 k-blocks][128 words = one 512-byte tile]; a box is box_k_blocks consecutive k-blocks of
// box_row_blocks row blocks, landing as [row block][k-block][512 bytes]. Row blocks past n and
// k-blocks past k read as zeros.
//
// The scales (and zero points: the same map over their own array) ([k / group][n], `element`) as boxes of box_channels channels x scale_rows_per_box() rows:
// the groups the box's box_k_blocks k-blocks span (4 for group 32 and two k-blocks, 2 for group
// 64, else 1; boxes start on a multiple of box_k_blocks k-blocks, so a group of 128 or more is
// never split). Channels and rows past the end read as zeros.
// (Host and device: the kernel arms its barrier with the same byte count.)
__host__ __device__ constexpr int scale_rows_per_box(int group_size, int box_k_blocks) {
  return group_size < box_k_blocks * 64 ? box_k_blocks * 64 / group_size : 1;
}

// Whether the driver offers tensor-map encoding (cuTensorMapEncodeTiled, CUDA 12+ drivers).
bool tensor_maps_supported();

// cudaErrorNotSupported without tensor-map encoding; cudaErrorInvalidValue when the driver rejects a
// descriptor (not expected for any shape the runner admits).
// `zeros` may be null (no zero-point map is encoded then).
cudaError_t encode_tensor_maps(TensorMaps* maps, ElementType element, const void* a, const void* packed_weights,
                               const void* scales, const void* zeros, int m, int n, int k, int group_size,
                               int box_rows, int box_row_blocks, int box_k_blocks);

// The grouped launch's maps: A over all `rows` sorted rows, the weights over the experts' packed
// buffers back to back (one packed layout of experts * n rows: each expert's is n / 16 row blocks
// of k / 64 tiles, contiguous), the scales and zeros over [experts * k / group][n]. The kernel
// adds the expert's origin (ExpertOrigin) to its coordinates. TMA coordinates are 32-bit, so the
// runner admits the warp-specialized grouped kernels only while experts * n and
// experts * k / group fit in an int.
cudaError_t encode_grouped_tensor_maps(TensorMaps* maps, ElementType element, const void* a,
                                       const void* packed_weights, const void* scales, const void* zeros, int rows,
                                       int experts, int n, int k, int group_size, int box_rows, int box_row_blocks,
                                       int box_k_blocks);

}  // namespace w4a16::fused
