#pragma once
// Test-only device helpers for problems too large to generate or check on the host: activations
// filled on the GPU from a counter-based hash (so the host can recompute any sampled row without
// holding the whole matrix), and a count of the non-finite elements of a result.

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "w4a16/format.h"

namespace w4a16::test {

#if defined(__CUDACC__)
#define W4A16_TEST_HOST_DEVICE __host__ __device__
#else
#define W4A16_TEST_HOST_DEVICE
#endif

// Element `index` of the hashed matrix with `seed`: a multiple of 1/128 in [-1, 1], so that it is
// exact in fp16 and bf16 alike and the device and host conversions cannot round differently.
W4A16_TEST_HOST_DEVICE inline float hashed_value(uint64_t seed, uint64_t index) {
  uint64_t x = seed + 0x9E3779B97F4A7C15ull * (index + 1);  // splitmix64's finalizer
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<float>(static_cast<int>(x % 257) - 128) / 128.0f;
}

// data[i] = hashed_value(seed, i) as `element` bits, i in [0, count).
cudaError_t fill_hashed(uint16_t* data, size_t count, uint64_t seed, ElementType element, cudaStream_t stream);

// How many of data[0, count) are NaN or infinite (as `element`); synchronizes `stream`.
cudaError_t count_non_finite(const uint16_t* data, size_t count, ElementType element, cudaStream_t stream,
                             unsigned long long* result);

}  // namespace w4a16::test
