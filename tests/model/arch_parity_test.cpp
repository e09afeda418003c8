// Architecture parity with Hugging Face transformers: tiny random-weight checkpoints of every
// supported architecture (tests/data/tiny/, made by tools/testdata/make_tiny_checkpoints.py with
// transformers 5.17 on the GPU machine) and the logits transformers computed for a fixed prompt.
// Our FP32 forward pass must match them within 1e-4 relative error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "sharq/runtime/cpu/transformer.h"

namespace {

using namespace sharq;

class ArchParity : public ::testing::TestWithParam<const char*> {};

std::string tiny_dir(const char* arch) { return std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny/" + arch; }

TEST_P(ArchParity, Fp32LogitsMatchTransformers) {
  const std::string dir = tiny_dir(GetParam());
  std::ifstream f(dir + "/reference.json");
  ASSERT_TRUE(f) << dir;
  const nlohmann::json ref = nlohmann::json::parse(f);
  const std::vector<int32_t> ids = ref["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<float> want = ref["logits"].get<std::vector<float>>();
  const ModelWeights ck = load_model_weights(dir);
  const Transformer model(ck, Scheme{});
  const int64_t T = static_cast<int64_t>(ids.size()), V = model.config().vocab_size;
  ASSERT_EQ(static_cast<int64_t>(want.size()), T * V);
  KVCache cache = model.new_cache(T);
  std::vector<float> got(static_cast<size_t>(T * V));
  model.forward(ids.data(), T, cache, got.data(), true);
  double num = 0, den = 0, maxabs = 0, maxref = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
    maxabs = std::max(maxabs, std::fabs(d));
    maxref = std::max(maxref, std::fabs(static_cast<double>(want[i])));
  }
  std::printf("  %-12s rel L2 %.2e, max |diff| / max |ref| %.2e\n", GetParam(), std::sqrt(num / den), maxabs / maxref);
  EXPECT_LT(std::sqrt(num / den), 1e-4);
  EXPECT_LT(maxabs / maxref, 1e-4);
}

TEST_P(ArchParity, EveryQuantizedSchemeRuns) {
  const ModelWeights ck = load_model_weights(tiny_dir(GetParam()));
  const std::vector<int32_t> ids = {5, 17, 99, 3, 200, 42, 7, 8};
  for (const char* s : {"nvfp4", "sharq", "sharq:s24", "mxfp4", "sharq-hif4", "fp8"}) {
    const Transformer model(ck, parse_scheme(s));
    KVCache cache = model.new_cache(8);
    std::vector<float> logits(static_cast<size_t>(8 * model.config().vocab_size));
    model.forward(ids.data(), 8, cache, logits.data(), true);
    EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); })) << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, ArchParity,
                         ::testing::Values("llama3", "llama2_tied", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe"));

}  // namespace
