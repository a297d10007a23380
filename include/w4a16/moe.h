#pragma once
// Mixture-of-experts, host side: token routing in the layout the grouped GEMM takes, the experts'
// weights packed back to back, and the CPU reference of the grouped product (issue 21; the
// grouped kernel and its runner entry point come next and take exactly these arrays, uploaded).
//
// Routing layout. Each token picks top_k experts (expert_ids [tokens][top_k]); the tokens x top_k
// (token, choice) pairs are sorted by expert, stably (token order inside an expert), into
// "positions" 0 .. tokens*top_k - 1:
//   expert_offsets [E + 1]   positions of expert e are [expert_offsets[e], expert_offsets[e + 1])
//   source_rows    [P]       the token (row of A) of each position
//   choice_weights [P]       the routing weight of each position (what the combine multiplies by)
// A grouped GEMM computes, for each position p of expert e, out[p] = alpha * A[source_rows[p]] *
// dequant(W_e)^T (gathering A's rows through source_rows, so no permuted copy of A is needed);
// combining adds each token's top_k rows, weighted: C[t] = sum_p choice_weights[p] out[p] over the
// positions p of token t.

#include <cstdint>
#include <vector>

#include "w4a16/quantize.h"
#include "w4a16/status.h"

namespace w4a16 {

struct ExpertRouting {
  int experts = 0;
  int tokens = 0;
  int top_k = 0;
  std::vector<int32_t> expert_offsets;  // [experts + 1], expert_offsets[0] = 0, last = tokens * top_k
  std::vector<int32_t> source_rows;     // [tokens * top_k]
  std::vector<float> choice_weights;    // [tokens * top_k]; all 1 when route_tokens got no weights

  int positions() const { return tokens * top_k; }
  int rows_of(int expert) const { return expert_offsets[expert + 1] - expert_offsets[expert]; }
};

// expert_ids [tokens][top_k] in [0, experts), a token's choices distinct; expert_weights the same
// shape (finite) or null. tokens >= 1, 1 <= top_k <= experts, and tokens * top_k < 2^31.
Status route_tokens(const int32_t* expert_ids, const float* expert_weights, int tokens, int top_k, int experts,
                    ExpertRouting* out);

// Experts' weights as one device-ready set: packed [E][n*k/2] bytes (pack_weights of each expert,
// back to back), scales and zeros [E][k/g][n] (zeros empty without zero points). Every expert
// must have the same n, k, group size, element type and quant op.
struct PackedExperts {
  int experts = 0, n = 0, k = 0, group_size = 0;
  Format format;
  std::vector<uint8_t> packed;
  std::vector<uint16_t> scales, zeros;
};
Status pack_experts(const std::vector<QuantizedWeights>& experts, PackedExperts* out);

// The grouped product in double, one [n] row per position in sorted order: out[p][j] = alpha *
// sum_i a[source_rows[p]][i] * w_e[j][i], e the expert of position p (a: [tokens][k], bits of
// the experts' element type). `positions` lists the positions to compute (all when empty), in
// that order, so a check of a large problem can sample.
Status reference_grouped_gemm(const uint16_t* a, const std::vector<QuantizedWeights>& experts,
                              const ExpertRouting& routing, float alpha, const std::vector<int>& positions,
                              std::vector<double>* out);

// The combine step in double: token_out[t][j] = sum over the positions p of token t of
// choice_weights[p] * sorted[p][j]; sorted is [positions][n] (every position, in sorted order).
Status combine_routed_rows(const std::vector<double>& sorted, int n, const ExpertRouting& routing,
                           std::vector<double>* token_out);

}  // namespace w4a16
