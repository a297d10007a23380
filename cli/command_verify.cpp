// w4a16 verify: one GEMM on random data, checked against the CPU reference (double accumulation).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cli/cli_support.h"
#include "cli/commands.h"
#include "cli/test_data.h"
#include "w4a16/reference.h"
#include "w4a16/runner.h"

namespace w4a16::cli {

namespace {

struct VerifyOptions {
  int m = 1, n = 4096, k = 4096, group = 128;
  std::string dtype = "fp16";
  bool zeros = false;
  std::string config;
  bool bias = false;
  float alpha = 1.0f;
  uint64_t seed = 0;
  int sample_rows = 16;
  double tolerance = 0.0;  // 0: per type (fp16 2e-3; bf16, 3 fewer mantissa bits, 1.6e-2)
};

int run_verify(const VerifyOptions& options) {
  // Every argument first, then the GPU: a mistake is answered as such on any machine.
  const int m = options.m, n = options.n, k = options.k;
  check_problem_options(m, n, k, options.group);
  if (!std::isfinite(options.alpha)) throw CliError("--alpha " + std::to_string(options.alpha) + ": must be finite");
  if (!(options.tolerance >= 0.0)) throw CliError("--tolerance " + std::to_string(options.tolerance) + ": must be >= 0");
  KernelConfig forced;
  if (!options.config.empty() && !parse_kernel_config(options.config, &forced)) {
    throw CliError("--config " + options.config + ": not a config name (w4a16 info lists them)");
  }
  const Format format{parse_element_type(options.dtype),
                      options.zeros ? QuantOp::kScaleAndZeros : QuantOp::kScaleOnly};
  if (!require_gpu("verify")) return 2;
  GemmRunner runner;
  check_status(runner.status(), "runner");
  const uint64_t seed = options.seed != 0 ? options.seed : std::random_device{}();
  const KernelConfig config = options.config.empty() ? runner.default_config(m, n, k, options.group, format) : forced;
  std::printf("verify m=%d n=%d k=%d group=%d format=%s bias=%d alpha=%g config=%s seed=%llu\n", m, n, k,
              options.group, format_name(format), int(options.bias), options.alpha, config.name().c_str(),
              static_cast<unsigned long long>(seed));

  const HostProblem problem = make_problem(m, n, k, options.group, format, options.bias, seed);
  DeviceBuffer a(problem.a.size() * 2), packed(problem.packed.size()), scales(problem.weights.scales.size() * 2),
      zeros(problem.weights.zeros.size() * 2), bias(problem.bias.size() * 2), c(size_t(m) * n * 2);
  a.upload(problem.a.data(), a.bytes());
  packed.upload(problem.packed.data(), packed.bytes());
  scales.upload(problem.weights.scales.data(), scales.bytes());
  if (options.zeros) zeros.upload(problem.weights.zeros.data(), zeros.bytes());
  if (options.bias) bias.upload(problem.bias.data(), bias.bytes());
  // Poison: 0xFFFF is a NaN in fp16 and bf16, so any element the kernel fails to write fails the check.
  check_cuda(cudaMemset(c.get(), 0xFF, c.bytes()), "cudaMemset");
  DeviceBuffer workspace(runner.workspace_bytes(m, n, k, config));

  GemmArguments args;
  args.a = a.get();
  args.packed_weights = packed.get();
  args.scales = scales.get();
  args.zeros = options.zeros ? zeros.get() : nullptr;
  args.element = format.element;
  args.bias = options.bias ? bias.get() : nullptr;
  args.c = c.get();
  args.m = m;
  args.n = n;
  args.k = k;
  args.group_size = options.group;
  args.alpha = options.alpha;
  check_status(runner.gemm(args, config, workspace.get(), workspace.bytes(), nullptr), "gemm");
  check_cuda(cudaDeviceSynchronize(), "gemm execution");

  std::vector<uint16_t> out(size_t(m) * n);
  check_cuda(cudaMemcpy(out.data(), c.get(), c.bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");

  // Every element must be finite (written); the value check uses all rows when the CPU can afford
  // it and a sample (first, last, random) otherwise.
  size_t non_finite = 0;
  for (uint16_t x : out) non_finite += !std::isfinite(element_to_float(format.element, x));
  std::vector<int> rows;
  const bool sample = double(m) * n * k > 4e9 && m > options.sample_rows;
  if (sample) {
    std::mt19937 pick{static_cast<uint32_t>(seed)};
    rows = {0, m - 1};
    while (int(rows.size()) < options.sample_rows) rows.push_back(int(pick() % uint32_t(m)));
  }
  const auto begin = std::chrono::steady_clock::now();
  std::vector<double> reference;
  check_status(reference_gemm(problem.a.data(), m, problem.weights, options.bias ? problem.bias.data() : nullptr,
                              options.alpha, rows, &reference),
               "reference_gemm");
  const double reference_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  const int checked_rows = sample ? int(rows.size()) : m;
  double max_abs = 0.0, error_squares = 0.0, reference_squares = 0.0;
  for (int r = 0; r < checked_rows; ++r) {
    const int row = sample ? rows[r] : r;
    for (int col = 0; col < n; ++col) {
      const double got = element_to_float(format.element, out[size_t(row) * n + col]);
      const double want = reference[size_t(r) * n + col];
      const double error = std::fabs(got - want);
      max_abs = std::isfinite(error) ? std::max(max_abs, error) : INFINITY;
      error_squares += error * error;
      reference_squares += want * want;
    }
  }
  const double relative = std::sqrt(error_squares / std::max(reference_squares, 1e-300));
  const double tolerance =
      options.tolerance > 0.0 ? options.tolerance : format.element == ElementType::kBFloat16 ? 1.6e-2 : 2e-3;
  const bool pass = non_finite == 0 && std::isfinite(relative) && relative <= tolerance;
  std::printf("checked %d of %d rows (reference %.1f s); non-finite outputs: %zu\n", checked_rows, m,
              reference_seconds, non_finite);
  std::printf("max abs error %.3e   relative error (Frobenius) %.3e   tolerance %.1e   %s\n", max_abs, relative,
              tolerance, pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}

}  // namespace

void register_verify(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<VerifyOptions>();
  CLI::App* command = app.add_subcommand("verify", "Run one GEMM on random data and compare with the CPU reference");
  command->add_option("--m", options->m, "rows of A and C");
  command->add_option("--n", options->n, "output channels (a multiple of 16)");
  command->add_option("--k", options->k, "input channels (a multiple of 64)");
  command->add_option("--group", options->group, "quantization group size (32, 64, 128 or k)");
  command->add_option("--dtype", options->dtype, "activation type: fp16 or bf16")->check(CLI::IsMember({"fp16", "bf16"}));
  command->add_flag("--zeros", options->zeros, "asymmetric weights with zero points (w = s * (q - z))");
  command->add_option("--config", options->config, "force a kernel config by name (see info)");
  command->add_flag("--bias", options->bias, "add a random bias");
  command->add_option("--alpha", options->alpha, "output scale");
  command->add_option("--seed", options->seed, "random seed (0: fresh)");
  command->add_option("--tolerance", options->tolerance,
                      "max relative (Frobenius) error (default: 2e-3 for fp16, 1.6e-2 for bf16)");
  command->callback([options, exit_code] { *exit_code = run_verify(*options); });
}

}  // namespace w4a16::cli
