// `w4a16 bench --moe`: the grouped (mixture-of-experts) GEMM on two expert sets (Mixtral-8x7B: 8
// experts, top-2, 14336x4096 and 4096x14336; a Qwen3-MoE-like set: 128 experts, top-8, 1536x2048
// and 2048x1536), at several token counts, with random routing (fixed seed) and skewed routing (a
// few experts take most tokens). Next to each grouped time, in the same run:
//  - the roofline from the bytes of the experts actually routed to (plus A and C) and the FLOPs;
//  - the loop of our single-expert gemm() calls, one per routed expert, each with its default
//    config (it needs the per-expert row counts on the host, which a real engine would have to
//    copy back: the loop's time flatters it);
//  - cuBLAS's grouped GEMM (cublasGemmGroupedBatchedEx) on dense weights of the same shapes, one
//    group per routed expert.
// Same method as `w4a16 bench`: weights rotated so that the routed bytes of all copies exceed 4x
// L2, a CUDA graph of back-to-back calls, median of repeats. The grouped and the loop results are
// compared (both are ours; they differ only in summation order) and the run fails if they do not
// agree.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <nlohmann/json.hpp>

#include "cli/bench_kernels.h"
#include "cli/bench_support.h"
#include "cli/cli_support.h"
#include "cli/dense_baseline.h"
#include "kernels/dequant_cublas/dequant_cublas.h"
#include "w4a16/moe.h"
#include "w4a16/runner.h"

namespace w4a16::cli {

namespace {

struct ExpertSet {
  const char* model;
  int experts, top_k;
  std::vector<std::pair<int, int>> layers;  // (n, k) per expert
};

const std::vector<ExpertSet> kExpertSets = {
    {"mixtral-8x7b", 8, 2, {{14336, 4096}, {4096, 14336}}},
    {"qwen3-moe-like", 128, 8, {{1536, 2048}, {2048, 1536}}},
};

// top_k distinct experts per token. Random: uniform. Skewed: expert e drawn with weight
// 1 / (e + 1)^2 (without replacement), so the first two or three experts take most choices.
std::vector<int32_t> route(std::mt19937& engine, int tokens, int top_k, int experts, bool skewed) {
  std::vector<int32_t> ids(size_t(tokens) * top_k);
  std::vector<double> weights(experts);
  for (int t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) weights[size_t(e)] = skewed ? 1.0 / ((e + 1.0) * (e + 1.0)) : 1.0;
    for (int c = 0; c < top_k; ++c) {
      std::discrete_distribution<int> pick(weights.begin(), weights.end());
      const int e = pick(engine);
      ids[size_t(t) * top_k + c] = e;
      weights[size_t(e)] = 0.0;
    }
  }
  return ids;
}

// max |x - y| / max |y| over two results in `element`.
double relative_difference(ElementType element, const std::vector<uint16_t>& x, const std::vector<uint16_t>& y) {
  double worst = 0.0, scale = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double a = element_to_float(element, x[i]), b = element_to_float(element, y[i]);
    if (!std::isfinite(a) || !std::isfinite(b)) return INFINITY;
    worst = std::max(worst, std::abs(a - b));
    scale = std::max(scale, std::abs(b));
  }
  return scale > 0 ? worst / scale : worst;
}

}  // namespace

int run_moe_bench(const MoeBenchOptions& options) {
  for (int tokens : options.tokens) {
    if (tokens < 1 || tokens > 1000000) throw CliError("--tokens " + std::to_string(tokens) + ": use 1 .. 1000000");
  }
  for (const ExpertSet& set : kExpertSets)
    for (const auto& [n, k] : set.layers) check_problem_options(1, n, k, options.group);
  if (!require_gpu("bench")) return 2;
  const auto wall_begin = std::chrono::steady_clock::now();
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp properties;
  check_cuda(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
  GemmRunner runner;
  check_status(runner.status(), "runner");
  const Format format{parse_element_type(options.dtype), options.float_zeros ? QuantOp::kScaleAndFloatZeros
                                                         : options.zeros     ? QuantOp::kScaleAndZeros
                                                                             : QuantOp::kScaleOnly};
  const ElementType element = format.element;
  const bool with_zeros = has_zeros(format.quant);
  const cudaDataType_t dense_type = element == ElementType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;

  cudaStream_t stream;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  cublasHandle_t cublas;
  if (cublasCreate(&cublas) != CUBLAS_STATUS_SUCCESS) throw CliError("cublasCreate failed");
  DeviceBuffer cublas_workspace(dequant_cublas::kCublasWorkspaceBytes);
  DenseBaseline dense_baseline;
  const Ceilings ceilings =
      measure_ceilings(dense_baseline, properties.multiProcessorCount, stream, options.repeats, element);
  std::printf("w4a16 bench --moe  device: %s (sm_%d%d, %d SMs, L2 %.0f MiB)  commit %s\n", properties.name,
              properties.major, properties.minor, properties.multiProcessorCount, properties.l2CacheSize / 1048576.0,
              git_commit().c_str());
  std::printf("ceilings     HBM read %.0f GB/s   %s tensor core %.0f TFLOP/s (best cuBLAS)\n", ceilings.hbm_read_gbps,
              to_string(element), ceilings.fp16_tflops);
  std::printf("method       format %s, group %d, routed weights rotated over >4x L2, CUDA graph of back-to-back "
              "calls, median of %d; roofline from the routed experts' bytes\n\n",
              format_name(format), options.group, options.repeats);
  std::printf("%-15s %6s %6s %6s %-7s %4s %8s  %-24s %9s %9s %6s %9s %9s %7s %7s %9s\n", "model", "n", "k", "tokens",
              "routing", "exp", "MB", "config", "w4a16 us", "roof us", "eff%", "loop us", "cuBLAS us", "vs loop",
              "vs cuBL", "check");

  const size_t l2 = size_t(properties.l2CacheSize);
  const double hbm_bytes_per_us = ceilings.hbm_read_gbps * 1e3;
  const double flops_per_us = ceilings.fp16_tflops * 1e6;
  nlohmann::json results = nlohmann::json::array();
  bool all_agree = true;
  std::mt19937 engine(1234);

  for (const ExpertSet& set : kExpertSets) {
    const int experts = set.experts, top_k = set.top_k;
    for (const auto& [n, k] : set.layers) {
      const size_t packed_bytes = size_t(n) * k / 2, scale_bytes = size_t(k / options.group) * n * 2;
      const size_t zero_bytes = with_zeros ? scale_bytes : 0, dense_bytes = size_t(n) * k * 2;
      const size_t expert_bytes = packed_bytes + scale_bytes + zero_bytes;
      // The routings first (they decide how many copies the rotation needs: the fewest routed
      // bytes of any call, i.e. the smallest token count).
      struct Case {
        int tokens;
        bool skewed;
        ExpertRouting routing;
        int routed = 0;
      };
      std::vector<Case> cases;
      for (int tokens : options.tokens)
        for (bool skewed : {false, true}) {
          Case c{tokens, skewed, {}, 0};
          const std::vector<int32_t> ids = route(engine, tokens, top_k, experts, skewed);
          check_status(route_tokens(ids.data(), nullptr, tokens, top_k, experts, &c.routing), "route_tokens");
          for (int e = 0; e < experts; ++e) c.routed += c.routing.rows_of(e) > 0;
          cases.push_back(std::move(c));
        }
      int fewest_routed = experts;
      for (const Case& c : cases) fewest_routed = std::min(fewest_routed, c.routed);
      const int w4_copies = copies_for(size_t(fewest_routed) * expert_bytes, l2);
      const int dense_copies = copies_for(size_t(fewest_routed) * dense_bytes, l2);
      std::vector<DeviceBuffer> packed, scales, zeros, dense;
      for (int i = 0; i < w4_copies; ++i) {
        packed.emplace_back(packed_bytes * experts);
        scales.emplace_back(scale_bytes * experts);
        zeros.emplace_back(zero_bytes * experts);
        fill_random_bytes(packed.back().get(), packed_bytes * experts, 100 + i);
        fill_random_elements(element, scales.back().get(), scale_bytes * experts / 2, 0.002f, 0.02f, 200 + i);
        if (with_zeros) {
          fill_random_zero_points(element, zeros.back().get(), zero_bytes * experts / 2, options.float_zeros, 500 + i);
        }
      }
      for (int i = 0; i < dense_copies; ++i) {
        dense.emplace_back(dense_bytes * experts);
        fill_random_elements(element, dense.back().get(), dense_bytes * experts / 2, -0.1f, 0.1f, 300 + i);
      }
      int max_rows = 0;
      for (const Case& c : cases) max_rows = std::max(max_rows, c.routing.positions());
      DeviceBuffer a(size_t(max_rows) * k * 2), c_grouped(size_t(max_rows) * n * 2), c_loop(size_t(max_rows) * n * 2);
      DeviceBuffer offsets(size_t(experts + 1) * 4);
      fill_random_elements(element, a.get(), size_t(max_rows) * k, -1, 1, 400);
      check_cuda(cudaDeviceSynchronize(), "fill");

      for (size_t case_index = 0; case_index < cases.size(); ++case_index) {
        const Case& cs = cases[case_index];
        const ExpertRouting& routing = cs.routing;
        const int rows = routing.positions();
        offsets.upload(routing.expert_offsets.data(), routing.expert_offsets.size() * 4);
        GroupedGemmArguments grouped;
        grouped.a = a.get();
        grouped.c = c_grouped.get();
        grouped.expert_offsets = offsets.get<int32_t>();
        grouped.experts = experts;
        grouped.rows = rows;
        grouped.n = n;
        grouped.k = k;
        grouped.group_size = options.group;
        grouped.element = element;
        grouped.float_zeros = format.quant == QuantOp::kScaleAndFloatZeros;
        auto point_at_copy = [&](GroupedGemmArguments& args, int i) {
          args.packed_weights = packed[size_t(i % w4_copies)].get();
          args.scales = scales[size_t(i % w4_copies)].get();
          args.zeros = with_zeros ? zeros[size_t(i % w4_copies)].get() : nullptr;
        };
        point_at_copy(grouped, 0);
        // The default config, then each --config one this case admits (a '#' line for the others).
        std::vector<KernelConfig> configs = {runner.default_grouped_config(rows, experts, n, k)};
        for (const KernelConfig& forced : options.configs) {
          if (forced == configs.front()) continue;
          if (Status s = runner.check_grouped(grouped, forced); !s.ok()) {
            std::printf("# %s skipped: %s\n", forced.name().c_str(), s.to_string().c_str());
            continue;
          }
          configs.push_back(forced);
        }
        const KernelConfig& config = configs.front();
        check_status(runner.check_grouped(grouped, config), "grouped arguments");

        const double bytes = double(cs.routed) * expert_bytes + 2.0 * rows * k + 2.0 * rows * n;
        const double flops = 2.0 * rows * double(n) * k;
        const double roofline_us = std::max(bytes / hbm_bytes_per_us, flops / flops_per_us);
        const int iterations = std::max(iterations_for(roofline_us), w4_copies);

        std::vector<Timing> grouped_timings;
        for (size_t c = 0; c < configs.size(); ++c) {
          grouped_timings.push_back(time_graph(
              [&](int i) {
                point_at_copy(grouped, i);
                check_status(runner.grouped_gemm(grouped, configs[c], stream), "grouped_gemm");
              },
              iterations, options.repeats, stream, case_index == 0 && c == 0 ? kSettleAfterComputeMs : 25));
        }
        const Timing& grouped_timing = grouped_timings.front();

        // The loop: one gemm() per routed expert, each with its default config.
        std::vector<GemmArguments> loop;
        size_t loop_workspace_bytes = 0;
        for (int e = 0; e < experts; ++e) {
          if (routing.rows_of(e) == 0) continue;
          GemmArguments args;
          args.a = a.get<uint8_t>() + size_t(routing.expert_offsets[size_t(e)]) * k * 2;
          args.c = c_loop.get<uint8_t>() + size_t(routing.expert_offsets[size_t(e)]) * n * 2;
          args.m = routing.rows_of(e);
          args.n = n;
          args.k = k;
          args.group_size = options.group;
          args.element = element;
          args.float_zeros = grouped.float_zeros;
          loop.push_back(args);
        }
        std::vector<int> loop_experts;
        for (int e = 0; e < experts; ++e)
          if (routing.rows_of(e) > 0) loop_experts.push_back(e);
        auto loop_at_copy = [&](int i) {
          for (size_t j = 0; j < loop.size(); ++j) {
            const size_t e = size_t(loop_experts[j]);
            loop[j].packed_weights = packed[size_t(i % w4_copies)].get<uint8_t>() + e * packed_bytes;
            loop[j].scales = scales[size_t(i % w4_copies)].get<uint8_t>() + e * scale_bytes;
            loop[j].zeros = with_zeros ? zeros[size_t(i % w4_copies)].get<uint8_t>() + e * zero_bytes : nullptr;
          }
        };
        loop_at_copy(0);
        for (const GemmArguments& args : loop) loop_workspace_bytes = std::max(loop_workspace_bytes, runner.workspace_bytes(args));
        DeviceBuffer loop_workspace(loop_workspace_bytes);
        const Timing loop_timing = time_graph(
            [&](int i) {
              loop_at_copy(i);
              for (const GemmArguments& args : loop) {
                check_status(runner.gemm(args, loop_workspace.get(), loop_workspace.bytes(), stream), "gemm");
              }
            },
            // (the graph holds iterations x launches nodes: capped near 4000)
            std::max(w4_copies, std::min(iterations, 4000 / std::max(1, int(loop.size())))), options.repeats, stream);

        // cuBLAS grouped GEMM on dense weights: group g is routed expert g, C^T = W_e * A_e^T in
        // cuBLAS's column-major terms (the same product as dequant_cublas::gemm_nt).
        const int groups = int(loop.size());
        std::vector<cublasOperation_t> trans_a(size_t(groups), CUBLAS_OP_T), trans_b(size_t(groups), CUBLAS_OP_N);
        std::vector<int> m_array(size_t(groups), n), k_array(size_t(groups), k), lda(size_t(groups), k),
            ldb(size_t(groups), k), ldc(size_t(groups), n), group_size(size_t(groups), 1);
        std::vector<int> n_array(size_t(groups), 0);
        std::vector<float> alpha(size_t(groups), 1.0f), beta(size_t(groups), 0.0f);
        for (int g = 0; g < groups; ++g) n_array[size_t(g)] = loop[size_t(g)].m;
        // One device array of pointers per dense copy: [A pointers (weights) | B (activations) | C].
        std::vector<DeviceBuffer> pointer_arrays;
        for (int i = 0; i < dense_copies; ++i) {
          std::vector<const void*> host(size_t(3 * groups));
          for (int g = 0; g < groups; ++g) {
            host[size_t(g)] = dense[size_t(i)].get<uint8_t>() + size_t(loop_experts[size_t(g)]) * dense_bytes;
            host[size_t(groups + g)] = loop[size_t(g)].a;
            host[size_t(2 * groups + g)] = loop[size_t(g)].c;
          }
          pointer_arrays.emplace_back(host.size() * sizeof(void*));
          pointer_arrays.back().upload(host.data(), host.size() * sizeof(void*));
        }
        const Timing cublas_timing = time_graph(
            [&](int i) {
              cublasSetStream(cublas, stream);
              cublasSetWorkspace(cublas, cublas_workspace.get(), dequant_cublas::kCublasWorkspaceBytes);
              const void* const* pointers = pointer_arrays[size_t(i % dense_copies)].get<const void*>();
              const cublasStatus_t status = cublasGemmGroupedBatchedEx(
                  cublas, trans_a.data(), trans_b.data(), m_array.data(), n_array.data(), k_array.data(), alpha.data(),
                  pointers, dense_type, lda.data(), pointers + groups, dense_type, ldb.data(), beta.data(),
                  const_cast<void* const*>(pointers + 2 * groups), dense_type, ldc.data(), groups, group_size.data(),
                  CUBLAS_COMPUTE_32F);
              if (status != CUBLAS_STATUS_SUCCESS) {
                throw CliError(std::string("cublasGemmGroupedBatchedEx: ") + cublasGetStatusString(status));
              }
            },
            std::max(iterations_for(std::max(double(cs.routed) * dense_bytes / hbm_bytes_per_us, flops / flops_per_us)),
                     dense_copies),
            options.repeats, stream);

        // Grouped against the loop, both on copy 0 (they differ only in summation order).
        point_at_copy(grouped, 0);
        loop_at_copy(0);
        check_status(runner.grouped_gemm(grouped, config, stream), "grouped_gemm");
        for (const GemmArguments& args : loop) {
          check_status(runner.gemm(args, loop_workspace.get(), loop_workspace.bytes(), stream), "gemm");
        }
        check_cuda(cudaStreamSynchronize(stream), "check run");
        std::vector<uint16_t> from_grouped(size_t(rows) * n), from_loop(size_t(rows) * n);
        check_cuda(cudaMemcpy(from_grouped.data(), c_grouped.get(), from_grouped.size() * 2, cudaMemcpyDeviceToHost), "download");
        check_cuda(cudaMemcpy(from_loop.data(), c_loop.get(), from_loop.size() * 2, cudaMemcpyDeviceToHost), "download");
        const double difference = relative_difference(element, from_grouped, from_loop);
        // Two fp32 sums of k products in different orders, each rounded to the element type.
        const double tolerance = element == ElementType::kBFloat16 ? 2e-2 : 4e-3;
        const bool agree = difference <= tolerance;
        all_agree = all_agree && agree;

        const double efficiency = roofline_us / grouped_timing.median_us;
        std::printf("%-15s %6d %6d %6d %-7s %4d %8.1f  %-24s %9.1f %9.1f %6.1f %9.1f %9.1f %6.2fx %6.2fx %9.1e%s\n",
                    set.model, n, k, cs.tokens, cs.skewed ? "skewed" : "random", cs.routed,
                    cs.routed * expert_bytes / 1e6, config.name().c_str(), grouped_timing.median_us, roofline_us,
                    100 * efficiency, loop_timing.median_us, cublas_timing.median_us,
                    loop_timing.median_us / grouped_timing.median_us, cublas_timing.median_us / grouped_timing.median_us,
                    difference, agree ? "" : " DISAGREE");
        for (size_t c = 1; c < configs.size(); ++c) {
          std::printf("%-15s %6d %6d %6d %-7s %4d %8.1f  %-24s %9.1f %9.1f %6.1f %9s %9s %6.2fx %6.2fx   (forced)\n",
                      set.model, n, k, cs.tokens, cs.skewed ? "skewed" : "random", cs.routed,
                      cs.routed * expert_bytes / 1e6, configs[c].name().c_str(), grouped_timings[c].median_us,
                      roofline_us, 100 * roofline_us / grouped_timings[c].median_us, "", "",
                      loop_timing.median_us / grouped_timings[c].median_us,
                      cublas_timing.median_us / grouped_timings[c].median_us);
        }
        std::fflush(stdout);
        nlohmann::json forced_timings = nlohmann::json::object();
        for (size_t c = 1; c < configs.size(); ++c) forced_timings[configs[c].name()] = grouped_timings[c].median_us;
        results.push_back({{"model", set.model},
                           {"experts", experts},
                           {"top_k", top_k},
                           {"n", n},
                           {"k", k},
                           {"tokens", cs.tokens},
                           {"rows", rows},
                           {"routing", cs.skewed ? "skewed" : "random"},
                           {"routed_experts", cs.routed},
                           {"largest_expert_rows", *std::max_element(n_array.begin(), n_array.end())},
                           {"routed_bytes", double(cs.routed) * expert_bytes},
                           {"bytes", bytes},
                           {"flops", flops},
                           {"format", format_name(format)},
                           {"group_size", options.group},
                           {"config", config.name()},
                           {"w4a16_us", grouped_timing.median_us},
                           {"w4a16_min_us", grouped_timing.min_us},
                           {"roofline_us", roofline_us},
                           {"efficiency", efficiency},
                           {"loop_us", loop_timing.median_us},
                           {"loop_launches", loop.size()},
                           {"cublas_grouped_us", cublas_timing.median_us},
                           {"speedup_vs_loop", loop_timing.median_us / grouped_timing.median_us},
                           {"speedup_vs_cublas_grouped", cublas_timing.median_us / grouped_timing.median_us},
                           {"w4a16_weight_copies", w4_copies},
                           {"dense_weight_copies", dense_copies},
                           {"grouped_vs_loop_relative_difference", difference},
                           {"forced_config_us", forced_timings}});
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_begin).count();
  std::printf("\n%zu cases in %.0f s%s\n", results.size(), seconds,
              all_agree ? "" : "; the grouped and the loop results DISAGREE somewhere (see 'check')");
  if (!options.json.empty()) {
    nlohmann::json document = {
        {"environment", environment_json(properties, device)},
        {"ceilings", {{"hbm_read_gbps", ceilings.hbm_read_gbps}, {"fp16_tflops", ceilings.fp16_tflops}}},
        {"method",
         {{"format", format_name(format)},
          {"group_size", options.group},
          {"repeats", options.repeats},
          {"statistic", "median per call over repeats of a CUDA graph of back-to-back calls"},
          {"rotation", "copies of all experts' weights so that the routed bytes of all copies exceed 4x L2"},
          {"roofline", "max(bytes / hbm_read, 2 rows n k / fp16_rate), bytes = routed experts' packed weights, "
                       "scales (and zeros) + A + C"},
          {"loop", "one gemm() per routed expert with its default config (host knows the row counts)"},
          {"cublas_grouped", "cublasGemmGroupedBatchedEx on dense weights, one group per routed expert"}}},
        {"wall_seconds", seconds},
        {"results", results}};
    write_json(document, options.json);
  }
  cublasDestroy(cublas);
  cudaStreamDestroy(stream);
  return all_agree ? 0 : 1;
}

}  // namespace w4a16::cli
