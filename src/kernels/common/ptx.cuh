#pragma once
// Thin wrappers over the PTX instructions the SM80-class kernels use. Each one is a single
// instruction; the comments say what the hardware requires of its operands.

#include <cstdint>

#include <cuda_fp16.h>

namespace w4a16::ptx {

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16-byte global -> shared copy that bypasses L1 (.cg): the weights are streamed once, and the
// activation tile is re-read from shared memory, never from L1. The destination is a shared-space
// address (what shared_address() returns): the mainloop computes those once, which saves a
// generic-to-shared conversion per copy. So do the ldmatrix wrappers below.
__device__ __forceinline__ void cp_async_16(uint32_t shared, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared), "l"(global));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most `pending` committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// Four 8x8 fp16 matrices from shared memory; lane L supplies the row address of matrix L / 8,
// row L % 8. Every address must be 16-byte aligned.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&out)[4], uint32_t shared) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3])
               : "r"(shared));
}

// Two 8x8 matrices; lanes 0..15 supply the addresses (the others' are ignored but must be valid).
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&out)[2], uint32_t shared) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(out[0]), "=r"(out[1]) : "r"(shared));
}

// D = A * B + D, A 16x16 fp16 (row), B 16x8 fp16 (col), D 16x8 fp32.
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Any three-input bitwise function in one instruction; `lut` is the function's truth table applied
// to the bytes 0xF0 (a), 0xCC (b), 0xAA (c).
template <int lut>
__device__ __forceinline__ uint32_t lop3(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c), "n"(lut));
  return d;
}

// An empty asm the compiler cannot see through: the value must live in a register from here on
// instead of being recomputed (rematerialized) where it is used.
__device__ __forceinline__ void pin(uint32_t& value) { asm volatile("" : "+r"(value)); }
__device__ __forceinline__ void pin(int& value) { asm volatile("" : "+r"(value)); }
__device__ __forceinline__ void pin(long long& value) { asm volatile("" : "+l"(value)); }

// Programmatic dependent launch (sm_90+; no-ops on older targets). A kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the previous kernel in the
// stream is still running; grid_dependency_wait() blocks until that kernel has completed and its
// writes are visible. launch_dependent_grids() lets the next kernel start early.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void launch_dependent_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

}  // namespace w4a16::ptx
