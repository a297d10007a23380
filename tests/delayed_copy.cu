#include "delayed_copy.h"

#include <cstdint>

namespace w4a16::test {
namespace {

__global__ void delayed_copy_kernel(const DelayedCopy job) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
  // %globaltimer counts nanoseconds whatever the SM clock.
  auto now = [] {
    unsigned long long time;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(time));
    return time;
  };
  const unsigned long long start = now();
  while (now() - start < job.delay_nanoseconds) {
  }
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (int c = 0; c < DelayedCopy::kMaxCopies; ++c) {
    auto* destination = static_cast<uint32_t*>(job.destination[c]);
    const auto* source = static_cast<const uint32_t*>(job.source[c]);
    for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < job.bytes[c] / 4; i += stride) {
      destination[i] = source[i];
    }
  }
}

}  // namespace

cudaError_t launch_delayed_copy(const DelayedCopy& job, cudaStream_t stream) {
  // 32 blocks: all resident at once, so every block triggers the dependent launch right away.
  delayed_copy_kernel<<<32, 256, 0, stream>>>(job);
  return cudaGetLastError();
}

}  // namespace w4a16::test
