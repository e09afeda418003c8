// MoE routing as Mixtral and Qwen3-MoE define it, stated once for every executor.
//
// Both: softmax over all experts' router logits (FP32 values, the normalizer summed in double),
// the top-k by probability (ties: the lower expert index first), and the chosen weights
// renormalized to sum 1 (Mixtral: always; Qwen3-MoE: when norm_topk_prob, its default) or kept as
// they are. The router itself is an FP32 linear [experts, hidden] that every scheme leaves
// unquantized.
#pragma once

#include <cstdint>
#include <vector>

#include "sharq/model/config.h"

namespace sharq {

struct MoeRouting {
  int64_t num_experts = 0, top_k = 0;
  int64_t expert_intermediate = 0;  // rows of each expert's gate/up
  bool renormalize = true;
};
MoeRouting moe_routing(const ModelConfig& c);  // num_experts == 0: a dense model

struct ExpertChoice {
  int64_t expert;
  float weight;
};

// One token: `router_logits` (num_experts values) are overwritten with the softmax
// probabilities; `out` receives the top_k choices, most probable first.
void route_token(const MoeRouting& r, float* router_logits, std::vector<ExpertChoice>& out);

}  // namespace sharq
