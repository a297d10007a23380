#pragma once
// One launch path for every kernel of the library: grid, block, dynamic shared memory, stream, and
// optionally programmatic stream serialization (PDL, sm_90+; see ptx::grid_dependency_wait), which
// lets the kernel start before the previous one in the stream has finished.

#include <cuda_runtime.h>

namespace w4a16 {

template <typename... KernelParameters, typename... Arguments>
cudaError_t launch_kernel(void (*kernel)(KernelParameters...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, bool programmatic, Arguments&&... arguments) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Arguments&&>(arguments)...);
}

}  // namespace w4a16
