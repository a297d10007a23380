// Mixture-of-experts host side (w4a16/moe.h): routing, packing back to back, the grouped reference.
#include "w4a16/moe.h"

#include <cmath>
#include <limits>
#include <string>

#include "w4a16/reference.h"

namespace w4a16 {

Status route_tokens(const int32_t* expert_ids, const float* expert_weights, int tokens, int top_k, int experts,
                    ExpertRouting* out) {
  if (expert_ids == nullptr || out == nullptr) return Status(StatusCode::kInvalidArgument, "route_tokens: null pointer");
  if (tokens < 1 || experts < 1 || top_k < 1 || top_k > experts) {
    return Status(StatusCode::kInvalidArgument, "route_tokens: need tokens >= 1, experts >= 1 and 1 <= top_k <= "
                                                "experts, got tokens " + std::to_string(tokens) + ", top_k " +
                                                    std::to_string(top_k) + ", experts " + std::to_string(experts));
  }
  if (static_cast<long long>(tokens) * top_k > std::numeric_limits<int32_t>::max()) {
    return Status(StatusCode::kInvalidArgument, "route_tokens: tokens * top_k must stay below 2^31");
  }
  const int positions = tokens * top_k;
  // Counting sort by expert: a histogram, its prefix sum, then each pair to the next free slot
  // of its expert, in token order (stable).
  std::vector<int32_t> offsets(size_t(experts) + 1, 0);
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < top_k; ++c) {
      const int32_t e = expert_ids[size_t(t) * top_k + c];
      if (e < 0 || e >= experts) {
        return Status(StatusCode::kInvalidArgument, "route_tokens: token " + std::to_string(t) + " choice " +
                                                        std::to_string(c) + " names expert " + std::to_string(e) +
                                                        ", outside [0, " + std::to_string(experts) + ")");
      }
      for (int earlier = 0; earlier < c; ++earlier) {
        if (expert_ids[size_t(t) * top_k + earlier] == e) {
          return Status(StatusCode::kInvalidArgument, "route_tokens: token " + std::to_string(t) + " picks expert " +
                                                          std::to_string(e) + " twice");
        }
      }
      if (expert_weights != nullptr && !std::isfinite(expert_weights[size_t(t) * top_k + c])) {
        return Status(StatusCode::kInvalidArgument, "route_tokens: token " + std::to_string(t) + " choice " +
                                                        std::to_string(c) + " has a non-finite weight");
      }
      ++offsets[size_t(e) + 1];
    }
  }
  for (int e = 0; e < experts; ++e) offsets[size_t(e) + 1] += offsets[size_t(e)];
  ExpertRouting routing;
  routing.experts = experts;
  routing.tokens = tokens;
  routing.top_k = top_k;
  routing.source_rows.resize(size_t(positions));
  routing.choice_weights.resize(size_t(positions));
  std::vector<int32_t> next(offsets.begin(), offsets.end() - 1);
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < top_k; ++c) {
      const size_t choice = size_t(t) * top_k + c;
      const int32_t p = next[size_t(expert_ids[choice])]++;
      routing.source_rows[size_t(p)] = t;
      routing.choice_weights[size_t(p)] = expert_weights != nullptr ? expert_weights[choice] : 1.0f;
    }
  }
  routing.expert_offsets = std::move(offsets);
  *out = std::move(routing);
  return Status::success();
}

namespace {

// Every expert the same shape and format, and each one well formed (the packer's own checks
// cover the codes).
Status check_experts(const std::vector<QuantizedWeights>& experts, const char* who) {
  if (experts.empty()) return Status(StatusCode::kInvalidArgument, std::string(who) + ": no experts");
  const QuantizedWeights& first = experts.front();
  for (size_t e = 0; e < experts.size(); ++e) {
    const QuantizedWeights& w = experts[e];
    if (w.n != first.n || w.k != first.k || w.group_size != first.group_size || w.format() != first.format()) {
      return Status(StatusCode::kInvalidArgument, std::string(who) + ": expert " + std::to_string(e) +
                                                      " differs from expert 0 in n, k, group size or format");
    }
  }
  return Status::success();
}

}  // namespace

Status pack_experts(const std::vector<QuantizedWeights>& experts, PackedExperts* out) {
  if (out == nullptr) return Status(StatusCode::kInvalidArgument, "pack_experts: null output");
  if (Status s = check_experts(experts, "pack_experts"); !s.ok()) return s;
  PackedExperts result;
  const QuantizedWeights& first = experts.front();
  result.experts = int(experts.size());
  result.n = first.n;
  result.k = first.k;
  result.group_size = first.group_size;
  result.format = first.format();
  const size_t packed_bytes = packed_weight_bytes(first.n, first.k);
  result.packed.reserve(packed_bytes * experts.size());
  for (const QuantizedWeights& w : experts) {
    std::vector<uint8_t> packed;
    if (Status s = pack_weights(w, &packed); !s.ok()) return s;
    result.packed.insert(result.packed.end(), packed.begin(), packed.end());
    if (w.scales.size() != size_t(w.k / w.group_size) * w.n) {
      return Status(StatusCode::kInvalidArgument, "pack_experts: scales are not [k/g][n]");
    }
    result.scales.insert(result.scales.end(), w.scales.begin(), w.scales.end());
    result.zeros.insert(result.zeros.end(), w.zeros.begin(), w.zeros.end());
  }
  *out = std::move(result);
  return Status::success();
}

Status reference_grouped_gemm(const uint16_t* a, const std::vector<QuantizedWeights>& experts,
                              const ExpertRouting& routing, float alpha, const std::vector<int>& positions_in,
                              std::vector<double>* out) {
  if (a == nullptr || out == nullptr) return Status(StatusCode::kInvalidArgument, "reference_grouped_gemm: null pointer");
  if (Status s = check_experts(experts, "reference_grouped_gemm"); !s.ok()) return s;
  if (routing.experts != int(experts.size()) || routing.expert_offsets.size() != experts.size() + 1 ||
      routing.source_rows.size() != size_t(routing.positions()) ||
      routing.expert_offsets.back() != routing.positions()) {
    return Status(StatusCode::kInvalidArgument, "reference_grouped_gemm: the routing does not match the experts");
  }
  std::vector<int> positions = positions_in;
  if (positions.empty()) {
    positions.resize(size_t(routing.positions()));
    for (int p = 0; p < routing.positions(); ++p) positions[size_t(p)] = p;
  }
  const int n = experts.front().n;
  out->assign(positions.size() * size_t(n), 0.0);
  // Per expert, its listed positions' source rows through the single-expert reference (exact in
  // double, so the grouping cannot change a value).
  for (int e = 0; e < routing.experts; ++e) {
    std::vector<int> rows, slots;
    for (size_t i = 0; i < positions.size(); ++i) {
      const int p = positions[i];
      if (p < 0 || p >= routing.positions()) {
        return Status(StatusCode::kInvalidArgument, "reference_grouped_gemm: position " + std::to_string(p) +
                                                        " outside [0, " + std::to_string(routing.positions()) + ")");
      }
      if (p >= routing.expert_offsets[size_t(e)] && p < routing.expert_offsets[size_t(e) + 1]) {
        const int row = routing.source_rows[size_t(p)];
        if (row < 0 || row >= routing.tokens) {
          return Status(StatusCode::kInvalidArgument, "reference_grouped_gemm: source row out of range");
        }
        rows.push_back(row);
        slots.push_back(int(i));
      }
    }
    if (rows.empty()) continue;
    std::vector<double> c;
    if (Status s = reference_gemm(a, routing.tokens, experts[size_t(e)], nullptr, alpha, rows, &c); !s.ok()) return s;
    for (size_t r = 0; r < rows.size(); ++r) {
      for (int j = 0; j < n; ++j) (*out)[size_t(slots[r]) * n + j] = c[r * n + j];
    }
  }
  return Status::success();
}

Status combine_routed_rows(const std::vector<double>& sorted, int n, const ExpertRouting& routing,
                           std::vector<double>* token_out) {
  if (token_out == nullptr || n < 1) return Status(StatusCode::kInvalidArgument, "combine_routed_rows: bad arguments");
  if (sorted.size() != size_t(routing.positions()) * n || routing.choice_weights.size() != size_t(routing.positions())) {
    return Status(StatusCode::kInvalidArgument, "combine_routed_rows: sorted must be [positions][n]");
  }
  token_out->assign(size_t(routing.tokens) * n, 0.0);
  for (int p = 0; p < routing.positions(); ++p) {
    const size_t t = size_t(routing.source_rows[size_t(p)]);
    const double weight = routing.choice_weights[size_t(p)];
    for (int j = 0; j < n; ++j) (*token_out)[t * n + j] += weight * sorted[size_t(p) * n + j];
  }
  return Status::success();
}

}  // namespace w4a16
