// The FP32 forward pass against Hugging Face transformers' own logits (sharq-lm-30m), prefill vs
// incremental decoding, and every scheme running end to end on a real checkpoint.
#include "sharq/runtime/cpu/transformer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "sharq/runtime/sampler.h"

namespace {

using namespace sharq;

std::string shared_path(const std::string& rel) { return std::string(SHARQ_SOURCE_DIR) + "/../shared/" + rel; }

#define REQUIRE_SHARED(rel)                                                                       \
  if (!std::filesystem::exists(shared_path(rel)))                                               \
  GTEST_SKIP() << "shared data not found: " << shared_path(rel) << " (expected beside the clone)"

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

class SharqLm30m : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(shared_path("models/sharq-lm-30m/config.json"))) return;
    ck_ = new ModelWeights(load_model_weights(shared_path("models/sharq-lm-30m")));
    ref_ = new nlohmann::json(read_json(shared_path("models/sharq-lm-30m/REFERENCE_HF_FP32.json")));
  }
  static void TearDownTestSuite() { delete ck_; delete ref_; ck_ = nullptr; ref_ = nullptr; }
  static ModelWeights* ck_;
  static nlohmann::json* ref_;
};
ModelWeights* SharqLm30m::ck_ = nullptr;
nlohmann::json* SharqLm30m::ref_ = nullptr;

TEST_F(SharqLm30m, Fp32LogitsMatchTransformers) {
  REQUIRE_SHARED("models/sharq-lm-30m/config.json");
  const Transformer model(*ck_, Scheme{});
  const std::vector<int32_t> ids = (*ref_)["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> argmax_ref = (*ref_)["prompt_argmax"].get<std::vector<int32_t>>();
  const std::vector<float> last_ref = (*ref_)["last_logits"].get<std::vector<float>>();
  const int64_t T = static_cast<int64_t>(ids.size()), V = model.config().vocab_size;
  ASSERT_EQ(static_cast<int64_t>(last_ref.size()), V);
  KVCache cache = model.new_cache(T);
  std::vector<float> logits(static_cast<size_t>(T * V));
  model.forward(ids.data(), T, cache, logits.data(), true);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = logits.data() + t * V;
    EXPECT_EQ(std::max_element(row, row + V) - row, argmax_ref[t]) << "position " << t;
  }
  // last position: relative L2 error and the largest element error, against transformers fp32
  const float* last = logits.data() + (T - 1) * V;
  double num = 0, den = 0, maxabs = 0, maxref = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double d = static_cast<double>(last[i]) - last_ref[i];
    num += d * d;
    den += static_cast<double>(last_ref[i]) * last_ref[i];
    maxabs = std::max(maxabs, std::fabs(d));
    maxref = std::max(maxref, std::fabs(static_cast<double>(last_ref[i])));
  }
  std::printf("  last-position logits: rel L2 %.3e, max |diff| %.3e (max |ref| %.2f)\n", std::sqrt(num / den), maxabs, maxref);
  EXPECT_LT(std::sqrt(num / den), 1e-4);
  EXPECT_LT(maxabs / maxref, 1e-4);
}

TEST_F(SharqLm30m, Fp32GreedyIdsMatchTransformers) {
  REQUIRE_SHARED("models/sharq-lm-30m/config.json");
  const Transformer model(*ck_, Scheme{});
  std::vector<int32_t> ids = (*ref_)["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> greedy_ref = (*ref_)["greedy_ids"].get<std::vector<int32_t>>();
  const int64_t V = model.config().vocab_size;
  KVCache cache = model.new_cache(static_cast<int64_t>(ids.size() + greedy_ref.size()));
  std::vector<float> logits(static_cast<size_t>(V));
  model.forward(ids.data(), static_cast<int64_t>(ids.size()), cache, logits.data(), false);
  std::vector<int32_t> out;
  uint64_t rng = 1;
  for (size_t i = 0; i < greedy_ref.size(); ++i) {
    int32_t next = sample_token(logits.data(), V, 0.0f, 1.0f, rng);
    out.push_back(next);
    model.forward(&next, 1, cache, logits.data(), false);
  }
  EXPECT_EQ(out, greedy_ref);
}

TEST_F(SharqLm30m, PrefillEqualsIncrementalDecodingBitForBit) {
  REQUIRE_SHARED("models/sharq-lm-30m/config.json");
  // Per-row work is independent of M in the GEMM and attention, so for schemes whose activation
  // scale is per token the two paths must agree exactly.
  for (const char* s : {"fp32", "sharq"}) {
    const Transformer model(*ck_, parse_scheme(s));
    const std::vector<int32_t> ids = (*ref_)["prompt_ids"].get<std::vector<int32_t>>();
    const int64_t T = static_cast<int64_t>(ids.size()), V = model.config().vocab_size;
    KVCache a = model.new_cache(T), b = model.new_cache(T);
    std::vector<float> all(static_cast<size_t>(T * V)), one(static_cast<size_t>(V));
    model.forward(ids.data(), T, a, all.data(), true);
    for (int64_t t = 0; t < T; ++t) {
      model.forward(&ids[t], 1, b, one.data(), false);
      ASSERT_EQ(0, std::memcmp(one.data(), all.data() + t * V, V * sizeof(float))) << s << " position " << t;
    }
  }
}

TEST_F(SharqLm30m, EverySchemeRunsOnARealCheckpoint) {
  REQUIRE_SHARED("models/sharq-lm-30m/config.json");
  const std::vector<int32_t> ids = (*ref_)["prompt_ids"].get<std::vector<int32_t>>();
  const int64_t T = static_cast<int64_t>(ids.size());
  std::vector<float> fp32_logits;
  for (const std::string& s : scheme_base_names()) {
    const Transformer model(*ck_, parse_scheme(s));
    const int64_t V = model.config().vocab_size;
    KVCache cache = model.new_cache(T);
    std::vector<float> logits(static_cast<size_t>(T * V));
    model.forward(ids.data(), T, cache, logits.data(), true);
    for (float v : logits) ASSERT_TRUE(std::isfinite(v)) << s;
    if (s == "fp32") {
      fp32_logits = logits;
      continue;
    }
    // the scheme changed the computation (its quantization is really applied) but stays a model:
    // the logits move, and the argmax still agrees with fp32 on most positions
    double maxdiff = 0;
    int agree = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float* a = logits.data() + t * V;
      const float* b = fp32_logits.data() + t * V;
      for (int64_t i = 0; i < V; ++i) maxdiff = std::max(maxdiff, static_cast<double>(std::fabs(a[i] - b[i])));
      agree += (std::max_element(a, a + V) - a) == (std::max_element(b, b + V) - b);
    }
    std::printf("  %-12s max |logit - fp32| %.4f, argmax agreement %d/%lld\n", s.c_str(), maxdiff, agree,
                static_cast<long long>(T));
    EXPECT_GT(maxdiff, 0.0) << s;
    EXPECT_GE(agree, T / 2) << s;
  }
}

TEST(Transformer, RejectsTokensOutsideTheVocabularyAndCacheOverflow) {
  REQUIRE_SHARED("models/stories260K/stories260K.bin");
  const ModelWeights ck = load_model_weights(shared_path("models/stories260K/stories260K.bin"));
  const Transformer model(ck, Scheme{});
  KVCache cache = model.new_cache(2);
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size));
  const int32_t bad = static_cast<int32_t>(model.config().vocab_size);
  EXPECT_THROW(model.forward(&bad, 1, cache, logits.data(), false), std::invalid_argument);
  const int32_t three[3] = {1, 2, 3};
  EXPECT_THROW(model.forward(three, 3, cache, logits.data(), false), std::invalid_argument);
}

}  // namespace
