#include "device_fill.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace w4a16::test {

namespace {

constexpr int kThreads = 256;
constexpr int kBlocks = 4096;  // grid-stride loops: any count, 64-bit indices

__global__ void fill_hashed_kernel(uint16_t* data, size_t count, uint64_t seed, bool bf16) {
  for (size_t i = blockIdx.x * size_t(kThreads) + threadIdx.x; i < count; i += size_t(gridDim.x) * kThreads) {
    const float value = hashed_value(seed, i);
    data[i] = bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(value)) : __half_as_ushort(__float2half_rn(value));
  }
}

// Exponent bits all ones: infinity or NaN, in either format.
__global__ void count_non_finite_kernel(const uint16_t* data, size_t count, uint16_t exponent_mask,
                                        unsigned long long* result) {
  unsigned long long local = 0;
  for (size_t i = blockIdx.x * size_t(kThreads) + threadIdx.x; i < count; i += size_t(gridDim.x) * kThreads) {
    local += (data[i] & exponent_mask) == exponent_mask;
  }
  if (local != 0) atomicAdd(result, local);
}

}  // namespace

cudaError_t fill_hashed(uint16_t* data, size_t count, uint64_t seed, ElementType element, cudaStream_t stream) {
  fill_hashed_kernel<<<kBlocks, kThreads, 0, stream>>>(data, count, seed, element == ElementType::kBFloat16);
  return cudaGetLastError();
}

cudaError_t count_non_finite(const uint16_t* data, size_t count, ElementType element, cudaStream_t stream,
                             unsigned long long* result) {
  unsigned long long* device_result = nullptr;
  cudaError_t error = cudaMalloc(&device_result, sizeof(unsigned long long));
  if (error != cudaSuccess) return error;
  const uint16_t mask = element == ElementType::kBFloat16 ? 0x7F80 : 0x7C00;
  if ((error = cudaMemsetAsync(device_result, 0, sizeof(unsigned long long), stream)) == cudaSuccess) {
    count_non_finite_kernel<<<kBlocks, kThreads, 0, stream>>>(data, count, mask, device_result);
    if ((error = cudaGetLastError()) == cudaSuccess &&
        (error = cudaMemcpyAsync(result, device_result, sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream)) ==
            cudaSuccess) {
      error = cudaStreamSynchronize(stream);
    }
  }
  const cudaError_t freed = cudaFree(device_result);
  return error != cudaSuccess ? error : freed;
}

}  // namespace w4a16::test
