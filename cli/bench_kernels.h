#pragma once
// Device helpers for the benchmark: random fills made on the GPU (the benchmark's weights are
// gigabytes; generating them on the host would dominate its run time) and the HBM read probe.

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "w4a16/format.h"

namespace w4a16::cli {

// Uniformly random bytes (any byte is a valid pair of int4 codes).
void fill_random_bytes(void* data, size_t bytes, uint64_t seed);
// 16-bit values of `element` uniform in [low, high).
void fill_random_elements(ElementType element, void* data, size_t count, float low, float high, uint64_t seed);
// Zero points in [0, 15]: whole numbers (QuantOp::kScaleAndZeros), or any value (fractional: the
// float-zeros op).
void fill_random_zero_points(ElementType element, void* data, size_t count, bool fractional, uint64_t seed);

// Reads `bytes` of `data` once with 16-byte loads across the whole GPU (the result is folded into
// `sink` so the loads cannot be optimized away). Enqueue-only; time it with events.
// The per-shape read floor: reads `first_bytes` of `first` and `second_bytes` of `second` (both
// multiples of 16) once, in one kernel that does nothing else. A GEMM streaming the same bytes
// cannot beat it; how close it comes is the kernel's efficiency net of launch and HBM latency.
void launch_read_floor(const void* first, size_t first_bytes, const void* second, size_t second_bytes, unsigned* sink,
                       cudaStream_t stream);

void launch_read_probe(const void* data, size_t bytes, unsigned* sink, int sm_count, cudaStream_t stream);

}  // namespace w4a16::cli
