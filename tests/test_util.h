#pragma once
// Shared helpers of the w4a16 test suite: fresh random data with a reported seed, RAII device
// buffers whose every CUDA call is checked, a GPU probe, and the comparison of a GPU result with
// the CPU reference under an error bound derived from the arithmetic.

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "w4a16/quantize.h"
#include "w4a16/runner.h"
#include "w4a16/status.h"

// gtest printers, found by ADL, so that failures name codes and configs instead of dumping bytes.
namespace w4a16 {
void PrintTo(StatusCode code, std::ostream* os);
void PrintTo(const Status& status, std::ostream* os);
void PrintTo(const KernelConfig& config, std::ostream* os);
}  // namespace w4a16

namespace w4a16::test {

// ---------------------------------------------------------------------------------------------
// CUDA checks. Usable in any function returning void (ASSERT) or anywhere (EXPECT).
#define W4A16_ASSERT_CUDA(call)                                                                   \
  do {                                                                                            \
    const cudaError_t w4a16_error_ = (call);                                                      \
    ASSERT_EQ(w4a16_error_, cudaSuccess) << #call << " failed: " << cudaGetErrorName(w4a16_error_) \
                                         << ": " << cudaGetErrorString(w4a16_error_);             \
  } while (0)
#define W4A16_EXPECT_CUDA(call)                                                                   \
  do {                                                                                            \
    const cudaError_t w4a16_error_ = (call);                                                      \
    EXPECT_EQ(w4a16_error_, cudaSuccess) << #call << " failed: " << cudaGetErrorName(w4a16_error_) \
                                         << ": " << cudaGetErrorString(w4a16_error_);             \
  } while (0)

// Status checks that print the status' message on failure.
::testing::AssertionResult IsOk(const Status& status);
::testing::AssertionResult HasCode(const Status& status, StatusCode expected);
#define W4A16_ASSERT_OK(expr) ASSERT_TRUE(::w4a16::test::IsOk(expr))
#define W4A16_EXPECT_OK(expr) EXPECT_TRUE(::w4a16::test::IsOk(expr))
#define W4A16_EXPECT_CODE(expr, code) EXPECT_TRUE(::w4a16::test::HasCode((expr), (code)))

// True when the CUDA runtime reports at least one device (probed once, error state cleared).
bool has_gpu();

// W4A16_TEST_FAMILY=<family>[,<family>...] (e.g. multistage,warp_specialized) restricts the
// every-config loops to those kernel families; tools/gpu-check.sh uses it to keep racecheck on our
// own kernels (cuBLAS's kernels trip racecheck's heuristics). Unset: every family.
bool family_selected(KernelFamily family);
#define W4A16_REQUIRE_GPU()                                                       \
  do {                                                                            \
    if (!::w4a16::test::has_gpu()) GTEST_SKIP() << "no CUDA device on this machine"; \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Random data. Every test draws a fresh seed from std::random_device (or W4A16_TEST_SEED, to replay
// a failure); W4A16_RANDOM(rng) declares the generator and attaches the seed to every failure.
class Random {
 public:
  Random();
  explicit Random(uint64_t seed) : seed_(seed), engine_(seed) {}
  uint64_t seed() const { return seed_; }
  std::string describe() const;  // "random seed 123 (replay: W4A16_TEST_SEED=123)"

  std::mt19937_64& engine() { return engine_; }
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(engine_); }
  int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(engine_); }  // [lo, hi]
  bool coin() { return uniform_int(0, 1) == 1; }

  // count values uniform in [lo, hi), rounded to fp16.
  std::vector<__half> halves(size_t count, float lo, float hi);
  // count values uniform in [lo, hi), rounded to `element`, as bits.
  std::vector<uint16_t> elements(ElementType element, size_t count, float lo, float hi);
  // [n][k] weights in [-1, 1) scaled by a magnitude 2^U(-3, 1) per row and per 32 consecutive
  // columns, so that neighbouring groups (and channels) get clearly different scales.
  std::vector<float> weights(int n, int k);
  // [count] 4-bit codes uniform in [0, 15].
  std::vector<uint8_t> codes(size_t count);
  // A non-zero alpha with |alpha| in [0.25, 2], either sign.
  float alpha();

 private:
  uint64_t seed_;
  std::mt19937_64 engine_;
};
#define W4A16_RANDOM(rng)          \
  ::w4a16::test::Random rng;       \
  SCOPED_TRACE(rng.describe())

// ---------------------------------------------------------------------------------------------
// RAII device array. The calls that can fail are void functions that ASSERT, so callers wrap them in
// ASSERT_NO_FATAL_FAILURE.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  ~DeviceArray() { reset(); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& other) noexcept : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceArray& operator=(DeviceArray&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  void allocate(size_t count) {
    reset();
    if (count == 0) return;
    void* pointer = nullptr;
    W4A16_ASSERT_CUDA(cudaMalloc(&pointer, count * sizeof(T)));
    data_ = static_cast<T*>(pointer);
    count_ = count;
  }
  // Allocates host.size() + extra elements and copies host to the front (the slack lets a test offset
  // a pointer and stay inside the allocation).
  void upload(const std::vector<T>& host, size_t extra = 0) {
    ASSERT_NO_FATAL_FAILURE(allocate(host.size() + extra));
    if (!host.empty())
      W4A16_ASSERT_CUDA(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(std::vector<T>* host) const {
    host->resize(count_);
    if (count_ > 0) W4A16_ASSERT_CUDA(cudaMemcpy(host->data(), data_, bytes(), cudaMemcpyDeviceToHost));
  }
  // Sets every byte (0xFF: fp16 and fp32 NaN), so that what a kernel fails to write stays visible.
  void fill_bytes(int value, cudaStream_t stream = nullptr) {
    if (count_ > 0) W4A16_ASSERT_CUDA(cudaMemsetAsync(data_, value, bytes(), stream));
  }
  void reset() {
    if (data_ != nullptr) W4A16_EXPECT_CUDA(cudaFree(data_));
    data_ = nullptr;
    count_ = 0;
  }

  T* get() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* data_ = nullptr;
  size_t count_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Comparing a result with the reference.
//
// Error bound for one output element, derived from the arithmetic the kernels may use, with u the
// unit roundoff of the element type (fp16 2^-11, bf16 2^-8):
//   - dequantized weights rounded to the element type: <= u |w|, and with zero points one more
//     rounding of z s (w = fma(q, s, -z s)): <= u |z s|
//   - fp32 accumulation over k terms: <= k * 2^-24 * sum|a w| (< 2^-11 sum|a w| for k <= 32768)
//   - rounding of the output, possibly twice (alpha * acc, then + bias):  <= 2 u |c|
// So |c - ref| <= 4u * (|alpha| * sum_j |a_j| |s_j| (|q_j - z_j| + |z_j|) + |ref|) holds with
// margin, plus 2^-14 for outputs near zero. `magnitude` is the sum (reference_magnitude()).
double error_bound(ElementType element, double reference, double magnitude);

// |alpha| * sum_j |a_j| |s_j| (|q_j - z_j| + |z_j|) for the listed rows (all when empty), laid out
// as reference_gemm lays out C. (Without zero points the |z| term is left out: nothing rounds z s.)
std::vector<double> reference_magnitude(const std::vector<uint16_t>& a, int m, const QuantizedWeights& weights,
                                        float alpha, const std::vector<int>& rows);

// `rows` (all m when empty) of the [m][n] result `c` (bits of `element`) against `reference`
// ([rows][n]). Every checked element must be finite and within error_bound; the message reports
// the max absolute error, the max error relative to |ref| and to the dot product's magnitude, and
// the worst elements.
::testing::AssertionResult matches_reference(ElementType element, const std::vector<uint16_t>& c, int m, int n,
                                             const std::vector<int>& rows, const std::vector<double>& reference,
                                             const std::vector<double>& magnitude);
// Every element of the [m][n] result is finite (catches unwritten, NaN-poisoned outputs).
::testing::AssertionResult all_finite(ElementType element, const std::vector<uint16_t>& c, int m, int n);
// Every byte equals `value` (an untouched poisoned buffer).
::testing::AssertionResult all_bytes_equal(const void* data, size_t bytes, uint8_t value);

// A test name's format part: fp16, fp16_zeros, fp16_float_zeros, bf16, bf16_zeros, bf16_float_zeros.
std::string format_tag(const Format& format);

// The rows a check compares: all of them (empty list) when m * n * k is at most `full_limit`, else
// the first, middle and last rows plus `extra` random ones, sorted and distinct.
std::vector<int> sample_rows(Random& rng, int m, int n, int k, double full_limit = 2e9, int extra = 5);

}  // namespace w4a16::test
