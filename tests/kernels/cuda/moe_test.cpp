// The MoE kernels (kernels/cuda/moe.h) against host references:
//   - moe_route: the RMSNorm of the FP32 rows, the router logits and model/moe_routing.h's
//     route_token (the CPU runtime's routing): the same experts in the same order wherever the
//     reference's consecutive top probabilities are not within 1e-5 of each other (the logits'
//     FP32 sums run in another order), the weights within 1e-5; an exact tie goes to the lower
//     expert (across lanes, inside one lane, at the k-th place); a row with a NaN takes the lowest
//     experts with NaN weights, as the CPU's stable sort does, and leaves its neighbours alone;
//     Mixtral (renormalized) and Qwen3-MoE (not) shapes, top_k = experts, one expert;
//   - moe_plan: offsets, source rows and destinations bit for bit the CPU runtime's grouping (each
//     expert's tokens in increasing order, experts in index order), with experts that get no token,
//     one token and every token, over several of the kernel's 1024-pair chunks;
//   - moe_combine: bit for bit the CPU's sum (each product rounded, added in expert order), FP16
//     and BF16 rows;
//   - bad arguments throw before any launch.
// Label `gpu`.
#include "sharq/kernels/cuda/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../../support/exceptions.h"
#include "../../support/gpu_test.h"
#include "../../support/test_inputs.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/model/moe_routing.h"

namespace {

using namespace sharq;
using namespace sharq::cuda;
using sharq_test::what_of;

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> w;
};

Routed gpu_route(const std::vector<float>& x, const std::vector<float>& nw, const std::vector<float>& router, int64_t M,
                 int64_t H, int64_t E, int64_t K, bool renorm, double eps) {
  DeviceBuffer<float> dx(x.size()), dn(nw.size()), dr(router.size()), dw(static_cast<size_t>(M * K)),
      dl(static_cast<size_t>(M * E));
  DeviceBuffer<int32_t> di(static_cast<size_t>(M * K));
  dx.upload(x.data());
  dn.upload(nw.data());
  dr.upload(router.data());
  MoeRouteArgs a;
  a.x = dx.get();
  a.norm_w = dn.get();
  a.eps = eps;
  a.router = dr.get();
  a.M = M;
  a.H = H;
  a.E = E;
  a.top_k = K;
  a.renormalize = renorm;
  a.logits = dl.get();
  a.experts = di.get();
  a.weights = dw.get();
  moe_route(a, nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  return {di.to_host(), dw.to_host()};
}

// The CPU runtime's router input and routing (transformer.cpp's rmsnorm, route_token), the logits
// summed in double; probs: the reference's sorted probabilities (for the near-tie test).
void cpu_route(const std::vector<float>& x, const std::vector<float>& nw, const std::vector<float>& router, int64_t m,
               int64_t H, const MoeRouting& R, double eps, std::vector<ExpertChoice>& out, std::vector<float>& probs) {
  double ss = 0.0;
  for (int64_t i = 0; i < H; ++i) ss += static_cast<double>(x[m * H + i]) * x[m * H + i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(H) + eps));
  std::vector<float> h(static_cast<size_t>(H));
  for (int64_t i = 0; i < H; ++i) h[i] = nw[i] * (x[m * H + i] * r);
  std::vector<float> lg(static_cast<size_t>(R.num_experts));
  for (int64_t e = 0; e < R.num_experts; ++e) {
    double s = 0.0;
    for (int64_t i = 0; i < H; ++i) s += static_cast<double>(router[e * H + i]) * h[i];
    lg[e] = static_cast<float>(s);
  }
  route_token(R, lg.data(), out);
  probs = lg;  // route_token left the probabilities there
  std::sort(probs.begin(), probs.end(), std::greater<float>());
}

TEST(MoeKernels, RoutingMatchesTheCpuRule) {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t M, H, E, K; bool renorm; };
  for (const Case c : {Case{37, 64, 4, 2, true}, Case{50, 4096, 8, 2, true}, Case{33, 2048, 128, 8, false},
                       Case{40, 512, 256, 16, true}, Case{600, 256, 128, 8, false}, Case{5, 128, 3, 3, true}, Case{6, 128, 1, 1, false}}) {
    SCOPED_TRACE(::testing::Message() << "M " << c.M << " H " << c.H << " E " << c.E << " k " << c.K);
    sharq_test::Rng rng(static_cast<uint64_t>(c.M * 1000 + c.E));
    std::vector<float> x(static_cast<size_t>(c.M * c.H)), nw(static_cast<size_t>(c.H)), router(static_cast<size_t>(c.E * c.H));
    for (auto& v : x) v = static_cast<float>(rng.normal() * 3.0);
    for (auto& v : nw) v = static_cast<float>(0.5 + rng.uniform());
    for (auto& v : router) v = static_cast<float>(rng.normal() * 2.0 / std::sqrt(static_cast<double>(c.H)));
    const double eps = 1e-6;
    const Routed g = gpu_route(x, nw, router, c.M, c.H, c.E, c.K, c.renorm, eps);
    MoeRouting R;
    R.num_experts = c.E;
    R.top_k = c.K;
    R.renormalize = c.renorm;
    int compared = 0;
    for (int64_t m = 0; m < c.M; ++m) {
      std::vector<ExpertChoice> ref;
      std::vector<float> probs;
      cpu_route(x, nw, router, m, c.H, R, eps, ref, probs);
      bool near_tie = false;
      for (int64_t k = 0; k < c.K; ++k)  // an order inside the top k that the logits' last bits could swap
        if (k + 1 < c.E && probs[k] - probs[k + 1] < 1e-5f) near_tie = true;
      if (near_tie) continue;
      ++compared;
      for (int64_t k = 0; k < c.K; ++k) {
        EXPECT_EQ(g.ids[m * c.K + k], ref[k].expert) << "token " << m << " choice " << k;
        EXPECT_NEAR(g.w[m * c.K + k], ref[k].weight, 1e-5f) << "token " << m << " choice " << k;
      }
      if (c.renorm) {
        float s = 0.0f;
        for (int64_t k = 0; k < c.K; ++k) s += g.w[m * c.K + k];
        EXPECT_NEAR(s, 1.0f, 1e-5f);
      }
    }
    EXPECT_GE(compared, c.M / 2) << "too few tokens without a near tie to compare";
  }
}

TEST(MoeKernels, AnExactTieGoesToTheLowerExpert) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 4, H = 64, E = 8, K = 2;
  sharq_test::Rng rng(7);
  std::vector<float> x(static_cast<size_t>(M * H)), nw(static_cast<size_t>(H), 1.0f), router(static_cast<size_t>(E * H));
  for (auto& v : x) v = static_cast<float>(std::fabs(rng.normal()) + 0.1);  // positive rows
  for (auto& v : router) v = static_cast<float>(rng.normal() * 0.01);
  for (int64_t i = 0; i < H; ++i) router[5 * H + i] = router[2 * H + i] = 0.5f;  // experts 2 and 5: the same large logit
  const Routed g = gpu_route(x, nw, router, M, H, E, K, true, 1e-6);
  for (int64_t m = 0; m < M; ++m) {
    EXPECT_EQ(g.ids[m * K], 2);
    EXPECT_EQ(g.ids[m * K + 1], 5);
    EXPECT_EQ(g.w[m * K], g.w[m * K + 1]);
    EXPECT_EQ(g.w[m * K], 0.5f);
  }
}

// Ties inside one lane's experts (e and e + 32) and at the k-th place: 64 experts, k = 3; experts 7,
// 39 and 40 share the largest logit and 10 and 42 the next: the top 3 are 7, 39, 40 and, with k = 4,
// the fourth is 10 (not 42).
TEST(MoeKernels, TiesInsideALaneAndAtTheKthPlaceGoToTheLowerExpert) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 2, H = 64, E = 64;
  sharq_test::Rng rng(11);
  std::vector<float> x(static_cast<size_t>(M * H)), nw(static_cast<size_t>(H), 1.0f), router(static_cast<size_t>(E * H));
  for (auto& v : x) v = static_cast<float>(std::fabs(rng.normal()) + 0.1);
  for (auto& v : router) v = static_cast<float>(rng.normal() * 0.001);
  for (int64_t i = 0; i < H; ++i) {
    for (int e : {7, 39, 40}) router[e * H + i] = 0.3f;
    for (int e : {10, 42}) router[e * H + i] = 0.2f;
  }
  for (const int64_t K : {int64_t{3}, int64_t{4}}) {
    const Routed g = gpu_route(x, nw, router, M, H, E, K, false, 1e-6);
    for (int64_t m = 0; m < M; ++m) {
      EXPECT_EQ(g.ids[m * K + 0], 7);
      EXPECT_EQ(g.ids[m * K + 1], 39);
      EXPECT_EQ(g.ids[m * K + 2], 40);
      if (K == 4) {
        EXPECT_EQ(g.ids[m * K + 3], 10);
      }
    }
  }
}

TEST(MoeKernels, ANanRowTakesTheLowestExpertsAndSparesItsNeighbours) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 3, H = 64, E = 16, K = 2;
  sharq_test::Rng rng(12);
  std::vector<float> x(static_cast<size_t>(M * H)), nw(static_cast<size_t>(H), 1.0f), router(static_cast<size_t>(E * H));
  for (auto& v : x) v = static_cast<float>(rng.normal());
  for (auto& v : router) v = static_cast<float>(rng.normal() * 0.1);
  const Routed clean = gpu_route(x, nw, router, M, H, E, K, true, 1e-6);
  x[1 * H + 5] = std::nanf("");
  const Routed g = gpu_route(x, nw, router, M, H, E, K, true, 1e-6);
  EXPECT_EQ(g.ids[1 * K + 0], 0);
  EXPECT_EQ(g.ids[1 * K + 1], 1);
  EXPECT_TRUE(std::isnan(g.w[1 * K + 0]) && std::isnan(g.w[1 * K + 1]));
  for (int64_t m : {int64_t{0}, int64_t{2}})
    for (int64_t k = 0; k < K; ++k) {
      EXPECT_EQ(g.ids[m * K + k], clean.ids[m * K + k]);
      EXPECT_EQ(g.w[m * K + k], clean.w[m * K + k]);
    }
  // and the plan of those choices stays in bounds (memcheck) with offsets that add up
  DeviceBuffer<int32_t> di(g.ids.size()), doff(static_cast<size_t>(E + 1)), dsrc(g.ids.size()), ddst(g.ids.size());
  di.upload(g.ids.data());
  moe_plan(di.get(), M, K, E, doff.get(), dsrc.get(), ddst.get(), nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(doff.to_host().back(), M * K);
}

// k distinct experts per token: expert 0 for every token, expert E-1 for token 0 only, experts 1 and
// 2 never; the rest random.
std::vector<int32_t> choices(int64_t M, int64_t K, int64_t E, uint64_t seed) {
  sharq_test::Rng rng(seed);
  std::vector<int32_t> ids;
  for (int64_t m = 0; m < M; ++m) {
    std::vector<int32_t> pick = {0};
    if (m == 0 && K > 1) pick.push_back(static_cast<int32_t>(E - 1));
    while (static_cast<int64_t>(pick.size()) < K) {
      const int32_t e = static_cast<int32_t>(3 + rng.uniform() * static_cast<double>(E - 4));
      if (e >= E - 1 || std::find(pick.begin(), pick.end(), e) != pick.end()) continue;
      pick.push_back(e);
    }
    std::reverse(pick.begin(), pick.end());  // expert 0 in the last slot: slot order is not expert order
    ids.insert(ids.end(), pick.begin(), pick.end());
  }
  return ids;
}

struct Plan {
  std::vector<int32_t> off, src, dst;
};

Plan cpu_plan(const std::vector<int32_t>& ids, int64_t M, int64_t K, int64_t E) {
  Plan p;
  p.off.assign(static_cast<size_t>(E + 1), 0);
  p.dst.assign(ids.size(), -1);
  for (int64_t e = 0; e < E; ++e) {
    p.off[e + 1] = p.off[e];
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        if (ids[m * K + k] == e) {
          p.dst[m * K + k] = static_cast<int32_t>(p.src.size());
          p.src.push_back(static_cast<int32_t>(m));
          ++p.off[e + 1];
        }
  }
  return p;
}

TEST(MoeKernels, PlanGroupsTokensAsTheCpuDoes) {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t M, K, E; };
  for (const Case c : {Case{1, 2, 8}, Case{5, 8, 128}, Case{333, 2, 8}, Case{2500, 8, 128}, Case{700, 16, 256}, Case{64, 3, 6}}) {
    SCOPED_TRACE(::testing::Message() << "M " << c.M << " k " << c.K << " E " << c.E);
    const std::vector<int32_t> ids = choices(c.M, c.K, c.E, static_cast<uint64_t>(c.M + c.E));
    const Plan ref = cpu_plan(ids, c.M, c.K, c.E);
    DeviceBuffer<int32_t> di(ids.size()), doff(static_cast<size_t>(c.E + 1)), dsrc(ids.size()), ddst(ids.size());
    di.upload(ids.data());
    moe_plan(di.get(), c.M, c.K, c.E, doff.get(), dsrc.get(), ddst.get(), nullptr);
    SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(doff.to_host(), ref.off);
    EXPECT_EQ(dsrc.to_host(), ref.src);
    EXPECT_EQ(ddst.to_host(), ref.dst);
    EXPECT_EQ(ref.off[1] - ref.off[0], c.M);         // expert 0: every token
    EXPECT_EQ(ref.off[3] - ref.off[1], 0);           // experts 1, 2: none
    if (c.K > 1) {
      EXPECT_GE(ref.off[c.E] - ref.off[c.E - 1], 1);  // expert E-1: token 0
    }
  }
}

// A step without tokens: every offset 0 (the wrapper still launches; nothing is read).
TEST(MoeKernels, PlanOfNoTokensIsAllZero) {
  SKIP_WITHOUT_GPU();
  const int64_t E = 200;
  DeviceBuffer<int32_t> doff(static_cast<size_t>(E + 1)), dummy(1);
  SHARQ_CUDA_CHECK(cudaMemset(doff.get(), 0x7F, doff.bytes()));  // poison
  moe_plan(nullptr, 0, 8, E, doff.get(), nullptr, nullptr, nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(doff.to_host(), std::vector<int32_t>(static_cast<size_t>(E + 1), 0));
}

TEST(MoeKernels, CombineIsTheCpuSumInExpertOrder) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 37, K = 4, E = 16, H = 96;
  const std::vector<int32_t> ids = choices(M, K, E, 99);
  const Plan plan = cpu_plan(ids, M, K, E);
  sharq_test::Rng rng(5);
  for (const bool fp16 : {false, true}) {
    std::vector<float> x(static_cast<size_t>(M * H)), w(static_cast<size_t>(M * K));
    std::vector<uint16_t> y(static_cast<size_t>(M * K * H));
    for (auto& v : x) v = static_cast<float>(rng.normal());
    for (auto& v : w) v = static_cast<float>(rng.uniform());
    for (auto& v : y) v = fp16 ? fp16_encode(static_cast<float>(rng.normal())) : bf16_encode(static_cast<float>(rng.normal()));
    std::vector<float> ref = x;
    for (int64_t m = 0; m < M; ++m) {
      std::vector<int64_t> order(static_cast<size_t>(K));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[m * K + a] < ids[m * K + b]; });
      for (int64_t h = 0; h < H; ++h)
        for (int64_t k : order) {
          const uint16_t yv = y[static_cast<size_t>(plan.dst[m * K + k]) * H + h];
          volatile float p = w[m * K + k] * (fp16 ? fp16_decode(yv) : bf16_decode(yv));  // rounded on its own
          ref[m * H + h] = ref[m * H + h] + p;
        }
    }
    DeviceBuffer<float> dx(x.size()), dw(w.size());
    DeviceBuffer<uint16_t> dy(y.size());
    DeviceBuffer<int32_t> di(ids.size()), dd(plan.dst.size());
    dx.upload(x.data());
    dw.upload(w.data());
    dy.upload(y.data());
    di.upload(ids.data());
    dd.upload(plan.dst.data());
    moe_combine(dx.get(), dy.get(), fp16 ? DType::f16 : DType::bf16, di.get(), dw.get(), dd.get(), M, K, H, nullptr);
    SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = dx.to_host();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], ref[i]) << "element " << i << (fp16 ? " fp16" : " bf16");
  }
}

TEST(MoeKernels, BadArgumentsAreRefusedBeforeLaunch) {
  MoeRouteArgs a;
  float f = 0.0f;
  int32_t i = 0;
  a.x = a.norm_w = a.router = a.weights = a.logits = &f;
  a.experts = &i;
  a.M = 1;
  a.H = 64;
  a.E = 8;
  a.top_k = 9;
  EXPECT_NE(what_of([&] { moe_route(a, nullptr); }).find("top_k"), std::string::npos);
  a.top_k = 2;
  a.E = 300;
  EXPECT_NE(what_of([&] { moe_route(a, nullptr); }).find("experts = 300"), std::string::npos);
  a.E = 8;
  a.H = 66;
  EXPECT_NE(what_of([&] { moe_route(a, nullptr); }).find("hidden = 66"), std::string::npos);
  EXPECT_NE(what_of([&] { moe_plan(&i, 1, 17, 64, &i, &i, &i, nullptr); }).find("top_k"), std::string::npos);
  EXPECT_NE(what_of([&] { moe_plan(&i, 1, 2, 8, nullptr, &i, &i, nullptr); }).find("null offsets"), std::string::npos);
  EXPECT_NE(what_of([&] { moe_combine(&f, &f, DType::bf16, &i, &f, &i, 1, 2, 0, nullptr); }).find("hidden"), std::string::npos);
}

}  // namespace
