#pragma once
// Thin wrappers over the PTX instructions the SM80-class kernels use. Each one is a single
// instruction; the comments say what the hardware requires of its operands.

#include <cstdint>


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

// Asks L2 to fetch [global, global + bytes) from memory (sm_90+; a no-op on older targets). No
// data reaches the SM and nothing completes on a barrier: this is a hint, used before the
// programmatic-launch wait (see grid_dependency_wait), where reading would be a race but warming
// L2 is not. L2 is the point of coherence for global memory: a write the previous kernel makes
// after the prefetch updates the line in L2, and the copies issued after the wait (cp.async.cg,
// TMA) read L2, never a stale L1. `global` 16-byte aligned, `bytes` a multiple of 16.
__device__ __forceinline__ void prefetch_l2_bulk(const void* global, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(global), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most `pending` committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// Four 8x8 matrices of 16-bit elements from shared memory; lane L supplies the row address of matrix L / 8,
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

// (The tensor-core instructions depend on the element type: common/element.cuh.)

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
__device__ __forceinline__ void pin(uint64_t& value) { asm volatile("" : "+l"(value)); }

// Shared-memory loads from a shared-space address. The warp-specialized loop keeps its operand
// addresses as pinned 32-bit values (generic pointers pinned in registers lose the compiler's
// knowledge that they point to shared memory and become generic loads). Volatile so that they
// stay between the mbarrier wait that says the data landed and the arrive that releases it.
__device__ __forceinline__ uint4 load_shared_128(uint32_t address) {
  uint4 value;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(value.x), "=r"(value.y), "=r"(value.z), "=r"(value.w)
               : "r"(address));
  return value;
}
__device__ __forceinline__ unsigned short load_shared_u16(uint32_t address) {
  unsigned short bits;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(bits) : "r"(address));
  return bits;
}

// mbarrier operations on a barrier given by its shared-space address (sm_90 for try_wait.parity
// and expect_tx). CUTLASS's ClusterBarrier takes generic pointers and converts them on every call,
// which in the warp-specialized k loop cost ~8 uniform instructions per wait (S2UR of the CTA id,
// window arithmetic); the loop computes each barrier's address once and steps it instead.
// All three carry a memory clobber: shared-memory reads of a stage must not move above the wait
// that says it has landed, nor below the arrive that releases it.
__device__ __forceinline__ void mbarrier_wait_parity(uint32_t barrier, uint32_t phase) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_again:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_again;\n"
      "}\n" ::"r"(barrier),
      "r"(phase)
      : "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(barrier) : "memory");
}
// Arrive and raise the barrier's expected transaction count by `bytes` (what the TMA loads
// completing on it will deliver).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier), "r"(bytes) : "memory");
}

// Programmatic dependent launch (sm_90+; no-ops on older targets). A kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the previous kernel in the
// stream is still running; grid_dependency_wait() blocks until that kernel has completed and its
// writes are visible. launch_dependent_grids() lets the next kernel start early.
//
// The rule every kernel here keeps, which is what makes the launch safe by default: before the
// wait a kernel reads no global memory and writes none; it only sets up shared memory and warms
// L2 with prefetch_l2_bulk (or a TMA prefetch) of its first weights. Any input, weights included,
// may therefore be written by the kernel just before it in the stream.
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
