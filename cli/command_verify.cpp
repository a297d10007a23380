// w4a16 verify: one GEMM on random data, checked against the CPU reference (double accumulation);
// with --checkpoint, the layers of an imported container (w4a16 import) on random activations.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cli/cli_support.h"
#include "cli/result_check.h"
#include "cli/commands.h"
#include "cli/test_data.h"
#include "host/parallel.h"
#include "w4a16/checkpoint.h"
#include "w4a16/reference.h"
#include "w4a16/safetensors.h"
#include "w4a16/runner.h"

namespace w4a16::cli {

namespace {

struct VerifyOptions {
  int m = 1, n = 4096, k = 4096, group = 128;
  std::string dtype = "fp16";
  bool zeros = false;
  bool float_zeros = false;
  std::string config;
  bool bias = false;
  float alpha = 1.0f;
  uint64_t seed = 0;
  int sample_rows = 16;
  double tolerance = 0.0;  // 0: per type (fp16 2e-3; bf16, 3 fewer mantissa bits, 1.6e-2)
  std::string checkpoint;  // an imported container: verify its layers instead of random weights
  std::string layer;       // with --checkpoint: one layer's name prefix (default: every layer)
};

double tolerance_for(const VerifyOptions& options, ElementType element) {
  return options.tolerance > 0.0 ? options.tolerance : element == ElementType::kBFloat16 ? 1.6e-2 : 2e-3;
}

// The layers of an imported container (every P with a P + "w4a16.packed" tensor, or --layer),
// each run on random activations at --m with the default config (or --config), its k_permutation
// applied, against the reference over the unpacked codes.
int run_verify_checkpoint(const VerifyOptions& options) {
  if (options.m < 1) throw CliError("--m " + std::to_string(options.m) + ": must be at least 1");
  // The layer defines n, k, group and format; bias and alpha are not part of the container check.
  const VerifyOptions defaults;
  if (options.n != defaults.n || options.k != defaults.k || options.group != defaults.group ||
      options.dtype != defaults.dtype || options.zeros || options.float_zeros || options.bias ||
      options.alpha != defaults.alpha) {
    throw CliError("--checkpoint takes its shapes and format from the file: no --n, --k, --group, --dtype, --zeros, "
                   "--float-zeros, --bias or --alpha");
  }
  KernelConfig forced;
  if (!options.config.empty() && !parse_kernel_config(options.config, &forced)) {
    throw CliError("--config " + options.config + ": not a config name (w4a16 info lists them)");
  }
  SafetensorsFile container;
  check_status(SafetensorsFile::open(options.checkpoint, &container), ("--checkpoint " + options.checkpoint).c_str());
  const std::string suffix = "w4a16.packed";
  std::vector<std::string> prefixes;
  for (const TensorView& tensor : container.tensors()) {
    const std::string& name = tensor.name;
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string prefix = name.substr(0, name.size() - suffix.size());
      // --layer names the prefix with or without its trailing dot.
      if (options.layer.empty() || prefix == options.layer || prefix == options.layer + ".") prefixes.push_back(prefix);
    }
  }
  if (prefixes.empty()) {
    throw CliError("--checkpoint " + options.checkpoint + ": " +
                   (options.layer.empty() ? std::string("holds no imported layer (w4a16 import makes them)")
                                          : "has no layer '" + options.layer + "' (a name prefix such as "
                                                                               "'model.layers.0.mlp.up_proj.')"));
  }
  std::vector<PackedLayer> layers(prefixes.size());
  for (size_t i = 0; i < prefixes.size(); ++i) {
    check_status(load_packed_layer(container, prefixes[i], &layers[i]), ("layer " + prefixes[i]).c_str());
  }
  if (!require_gpu("verify")) return 2;
  GemmRunner runner;
  check_status(runner.status(), "runner");
  const uint64_t seed = options.seed != 0 ? options.seed : std::random_device{}();
  int failures = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const PackedLayer& layer = layers[i];
    const int m = options.m, n = layer.n, k = layer.k;
    QuantizedWeights weights;
    weights.n = n;
    weights.k = k;
    weights.group_size = layer.group_size;
    weights.element = layer.format.element;
    check_status(unpack_weights(layer.packed->data, n, k, &weights.codes), "unpack_weights");
    auto bits_of = [](const TensorView* view) {
      std::vector<uint16_t> bits(view != nullptr ? view->bytes / 2 : 0);
      if (view != nullptr) std::memcpy(bits.data(), view->data, view->bytes);
      return bits;
    };
    weights.scales = bits_of(layer.scales);
    weights.zeros = bits_of(layer.zeros);
    weights.float_zeros = layer.format.quant == QuantOp::kScaleAndFloatZeros;
    std::vector<int32_t> permutation(layer.k_permutation != nullptr ? k : 0);
    if (layer.k_permutation != nullptr) std::memcpy(permutation.data(), layer.k_permutation->data, size_t(k) * 4);

    std::mt19937_64 rng(seed + i);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<uint16_t> a(size_t(m) * k), a_reference;
    for (uint16_t& x : a) x = float_to_element(weights.element, uniform(rng));
    if (permutation.empty()) {
      a_reference = a;
    } else {
      a_reference.resize(a.size());
      for (int r = 0; r < m; ++r)
        for (int j = 0; j < k; ++j) a_reference[size_t(r) * k + j] = a[size_t(r) * k + permutation[j]];
    }
    const Format format = weights.format();
    const KernelConfig config = options.config.empty() ? runner.default_config(m, n, k, layer.group_size, format) : forced;
    std::printf("layer %s: n=%d k=%d group=%d format=%s act-order=%s m=%d config=%s seed=%llu\n", prefixes[i].c_str(),
                n, k, layer.group_size, format_name(format), permutation.empty() ? "no" : "yes", m,
                config.name().c_str(), static_cast<unsigned long long>(seed + i));

    DeviceBuffer d_a(a.size() * 2), packed(layer.packed->bytes), scales(layer.scales->bytes),
        zeros(layer.zeros != nullptr ? layer.zeros->bytes : 0), d_permutation(permutation.size() * 4),
        c(size_t(m) * n * 2);
    d_a.upload(a.data(), d_a.bytes());
    packed.upload(layer.packed->data, packed.bytes());
    scales.upload(layer.scales->data, scales.bytes());
    if (layer.zeros != nullptr) zeros.upload(layer.zeros->data, zeros.bytes());
    if (!permutation.empty()) d_permutation.upload(permutation.data(), d_permutation.bytes());
    check_cuda(cudaMemset(c.get(), 0xFF, c.bytes()), "cudaMemset");  // NaN poison
    GemmArguments args;
    args.a = d_a.get();
    args.packed_weights = packed.get();
    args.scales = scales.get();
    args.zeros = layer.zeros != nullptr ? zeros.get() : nullptr;
    args.float_zeros = weights.float_zeros;
    args.k_permutation = permutation.empty() ? nullptr : d_permutation.get<int32_t>();
    args.element = weights.element;
    args.c = c.get();
    args.m = m;
    args.n = n;
    args.k = k;
    args.group_size = layer.group_size;
    DeviceBuffer workspace(runner.workspace_bytes(args, config));
    // A forced config that does not take this layer fails the layer, not the run.
    if (const Status s = runner.check(args, config, workspace.get(), workspace.bytes()); !s.ok()) {
      std::printf("config %s does not take this layer: %s\nFAIL\n", config.name().c_str(), s.to_string().c_str());
      ++failures;
      continue;
    }
    check_status(runner.gemm(args, config, workspace.get(), workspace.bytes(), nullptr), "gemm");
    check_cuda(cudaDeviceSynchronize(), "gemm execution");
    std::vector<uint16_t> out(size_t(m) * n);
    check_cuda(cudaMemcpy(out.data(), c.get(), c.bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    if (!matches_reference(out, a_reference, m, weights, nullptr, 1.0f, tolerance_for(options, weights.element),
                           options.sample_rows, seed + i)) {
      ++failures;
    }
  }
  std::printf("%zu layers, %d failed: %s\n", layers.size(), failures, failures == 0 ? "PASS" : "FAIL");
  return failures == 0 ? 0 : 1;
}

int run_verify(const VerifyOptions& options) {
  if (!options.checkpoint.empty()) return run_verify_checkpoint(options);
  if (!options.layer.empty()) throw CliError("--layer needs --checkpoint");
  // Every argument first, then the GPU: a mistake is answered as such on any machine.
  const int m = options.m, n = options.n, k = options.k;
  check_problem_options(m, n, k, options.group);
  if (!std::isfinite(options.alpha)) throw CliError("--alpha " + std::to_string(options.alpha) + ": must be finite");
  if (!(options.tolerance >= 0.0)) throw CliError("--tolerance " + std::to_string(options.tolerance) + ": must be >= 0");
  KernelConfig forced;
  if (!options.config.empty() && !parse_kernel_config(options.config, &forced)) {
    throw CliError("--config " + options.config + ": not a config name (w4a16 info lists them)");
  }
  if (options.zeros && options.float_zeros) throw CliError("--zeros and --float-zeros: choose one");
  const Format format{parse_element_type(options.dtype), options.float_zeros ? QuantOp::kScaleAndFloatZeros
                                                         : options.zeros     ? QuantOp::kScaleAndZeros
                                                                             : QuantOp::kScaleOnly};
  const bool with_zeros = has_zeros(format.quant);
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
  if (with_zeros) zeros.upload(problem.weights.zeros.data(), zeros.bytes());
  if (options.bias) bias.upload(problem.bias.data(), bias.bytes());
  // Poison: 0xFFFF is a NaN in fp16 and bf16, so any element the kernel fails to write fails the check.
  check_cuda(cudaMemset(c.get(), 0xFF, c.bytes()), "cudaMemset");
  DeviceBuffer workspace(runner.workspace_bytes(m, n, k, config));

  GemmArguments args;
  args.a = a.get();
  args.packed_weights = packed.get();
  args.scales = scales.get();
  args.zeros = with_zeros ? zeros.get() : nullptr;
  args.float_zeros = format.quant == QuantOp::kScaleAndFloatZeros;
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

  const bool pass = matches_reference(out, problem.a, m, problem.weights, options.bias ? problem.bias.data() : nullptr,
                                      options.alpha, tolerance_for(options, format.element), options.sample_rows, seed);
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
  command->add_flag("--zeros", options->zeros, "asymmetric weights with whole-number zero points (w = s * (q - z))");
  command->add_flag("--float-zeros", options->float_zeros, "asymmetric weights with fractional zero points (HQQ-style)");
  command->add_option("--config", options->config, "force a kernel config by name (see info)");
  command->add_flag("--bias", options->bias, "add a random bias");
  command->add_option("--alpha", options->alpha, "output scale");
  command->add_option("--seed", options->seed, "random seed (0: fresh)");
  command->add_option("--tolerance", options->tolerance,
                      "max relative (Frobenius) error (default: 2e-3 for fp16, 1.6e-2 for bf16)");
  command->add_option("--checkpoint", options->checkpoint,
                      "an imported container (w4a16 import): verify its layers on random activations at --m");
  command->add_option("--layer", options->layer, "with --checkpoint: only this layer (its name prefix)");
  command->callback([options, exit_code] { *exit_code = run_verify(*options); });
}

}  // namespace w4a16::cli
