#include "unpack_probe.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common/element.cuh"

namespace w4a16::test {

namespace {

template <class E>
__global__ void unpack_kernel(const UnpackCase* cases, int count, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const UnpackCase c = cases[i];
  uint32_t fragment[4];
  E::unpack(c.word, E::code_offsets(E::from_bits(c.zero_low), E::from_bits(c.zero_high)), fragment);
  for (int j = 0; j < 4; ++j) {
    const typename E::Pair pair = E::as_pair(fragment[j]);
    out[8 * i + 2 * j] = E::to_float(pair.x);
    out[8 * i + 2 * j + 1] = E::to_float(pair.y);
  }
}

template <class T>
struct DeviceBuffer {
  T* data = nullptr;
  ~DeviceBuffer() { cudaFree(data); }
};

}  // namespace

cudaError_t unpack_with_offsets(ElementType element, const std::vector<UnpackCase>& cases, std::vector<float>* out) {
  const int count = static_cast<int>(cases.size());
  DeviceBuffer<UnpackCase> d_cases;
  DeviceBuffer<float> d_out;
  if (cudaError_t e = cudaMalloc(&d_cases.data, cases.size() * sizeof(UnpackCase)); e != cudaSuccess) return e;
  if (cudaError_t e = cudaMalloc(&d_out.data, cases.size() * 8 * sizeof(float)); e != cudaSuccess) return e;
  if (cudaError_t e = cudaMemcpy(d_cases.data, cases.data(), cases.size() * sizeof(UnpackCase), cudaMemcpyHostToDevice);
      e != cudaSuccess) {
    return e;
  }
  with_element(element, [&](auto e) {
    unpack_kernel<decltype(e)><<<(count + 127) / 128, 128>>>(d_cases.data, count, d_out.data);
  });
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  out->resize(cases.size() * 8);
  return cudaMemcpy(out->data(), d_out.data, out->size() * sizeof(float), cudaMemcpyDeviceToHost);
}

}  // namespace w4a16::test
