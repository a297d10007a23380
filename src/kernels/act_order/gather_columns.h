#pragma once
// Act-order (GPTQ desc_act): the packed weights hold k in the order that makes every quantization
// group contiguous, and A's columns are gathered into that order before the GEMM:
//   gathered[r][j] = a[r][k_permutation[j]].
// The runner places `gathered` at the front of the caller's workspace and hands it to whichever
// kernel family runs, so every family serves act-order weights unchanged.

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace w4a16::act_order {

// Bytes of the gathered copy of A (m x k 16-bit elements), rounded up to the workspace alignment
// so that what follows it in the workspace stays 256-byte aligned.
size_t gathered_bytes(int m, int k);

// Enqueues the gather of 16-bit elements (fp16 and bf16 alike). k % 8 == 0; a, k_permutation and
// gathered 16-byte aligned; k_permutation a permutation of [0, k) (not checked here).
// `programmatic`: launched with programmatic stream serialization (sm_90+ builds only, see
// compiled_arch): the kernel waits for its predecessor before reading anything, then lets the
// GEMM behind it launch (that one waits for the whole gather before it reads `gathered`).
// `shared_limit`: the dynamic shared memory a block of the row-staging kernel may use on this
// device (prepare()'s result; 0: never stage).
cudaError_t gather_columns(const void* a, const int32_t* k_permutation, void* gathered, int m, int k,
                           cudaStream_t stream, bool programmatic, int shared_limit);

// Raises the row-staging kernel's dynamic shared-memory limit to the current device's opt-in
// maximum; returns that limit in bytes (0 when the kernel cannot run here). Once per runner.
int prepare();

// The virtual arch the gather kernel's body was compiled from for this device (e.g. 90), or 0.
int compiled_arch();

}  // namespace w4a16::act_order
