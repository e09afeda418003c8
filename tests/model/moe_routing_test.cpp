// MoE routing as model/ states it for every executor: softmax over all experts, top-k with ties
// to the lower index, renormalized for Mixtral always and for Qwen3-MoE per norm_topk_prob.
#include "sharq/model/moe_routing.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace {

using namespace sharq;

ModelConfig moe(Arch arch, bool norm_topk_prob) {
  ModelConfig c;
  c.arch = arch;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.intermediate_size = 32;
  c.moe_intermediate_size = 16;
  c.norm_topk_prob = norm_topk_prob;
  return c;
}

TEST(MoeRouting, TablesFollowEachArchitecture) {
  const MoeRouting mix = moe_routing(moe(Arch::mixtral, false));
  EXPECT_TRUE(mix.renormalize);  // Mixtral ignores norm_topk_prob
  EXPECT_EQ(mix.expert_intermediate, 32);
  EXPECT_EQ(mix.top_k, 2);
  const MoeRouting q = moe_routing(moe(Arch::qwen3_moe, false));
  EXPECT_FALSE(q.renormalize);
  EXPECT_EQ(q.expert_intermediate, 16);
  EXPECT_TRUE(moe_routing(moe(Arch::qwen3_moe, true)).renormalize);
}

TEST(MoeRouting, TopKOfTheSoftmaxWithRenormalization) {
  const double l[4] = {0.5, 2.0, -1.0, 1.0};
  double z = 0;
  for (double v : l) z += std::exp(v);
  std::vector<ExpertChoice> out;
  for (bool renorm : {true, false}) {
    std::vector<float> r = {0.5f, 2.0f, -1.0f, 1.0f};
    route_token(moe_routing(moe(Arch::qwen3_moe, renorm)), r.data(), out);
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0].expert, 1);
    EXPECT_EQ(out[1].expert, 3);
    const double p1 = std::exp(2.0) / z, p3 = std::exp(1.0) / z;
    EXPECT_NEAR(r[2], std::exp(-1.0) / z, 1e-7);  // the logits became probabilities
    EXPECT_NEAR(out[0].weight, renorm ? p1 / (p1 + p3) : p1, 1e-6);
    EXPECT_NEAR(out[1].weight, renorm ? p3 / (p1 + p3) : p3, 1e-6);
  }
}

TEST(MoeRouting, TiesGoToTheLowerExpert) {
  std::vector<float> r = {1.0f, 3.0f, 3.0f, 3.0f};
  std::vector<ExpertChoice> out;
  route_token(moe_routing(moe(Arch::mixtral, true)), r.data(), out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].expert, 1);
  EXPECT_EQ(out[1].expert, 2);
  EXPECT_EQ(out[0].weight, 0.5f);
  EXPECT_EQ(out[1].weight, 0.5f);
}

}  // namespace
