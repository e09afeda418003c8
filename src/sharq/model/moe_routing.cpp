#include "sharq/model/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace sharq {

MoeRouting moe_routing(const ModelConfig& c) {
  MoeRouting r;
  r.num_experts = c.num_experts;
  r.top_k = c.num_experts_per_tok;
  r.expert_intermediate = c.arch == Arch::mixtral ? c.intermediate_size : c.moe_intermediate_size;
  r.renormalize = c.arch == Arch::mixtral || c.norm_topk_prob;
  return r;
}

void route_token(const MoeRouting& R, float* r, std::vector<ExpertChoice>& out) {
  const int64_t E = R.num_experts, topk = R.top_k;
  const float mx = *std::max_element(r, r + E);
  double sum = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    r[e] = std::exp(r[e] - mx);
    sum += r[e];
  }
  for (int64_t e = 0; e < E; ++e) r[e] = static_cast<float>(r[e] / sum);
  std::vector<int64_t> idx(static_cast<size_t>(E));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return r[a] > r[b]; });
  float tsum = 0.0f;
  for (int64_t k = 0; k < topk; ++k) tsum += r[idx[k]];
  out.clear();
  for (int64_t k = 0; k < topk; ++k) out.push_back({idx[k], R.renormalize ? r[idx[k]] / tsum : r[idx[k]]});
}

}  // namespace sharq
