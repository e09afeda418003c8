// End-to-end: loader + tokenizer + forward pass + greedy decoding reproduce the model author's
// published stories260K output byte for byte; sampling is seeded and reproducible.
#include "sharq/tools/generate.h"

#include "sharq/runtime/cpu/executor.h"
#include "sharq/runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <fstream>
#include <sstream>

namespace {

using namespace sharq;

std::string shared_path(const std::string& rel) { return std::string(SHARQ_SOURCE_DIR) + "/../shared/" + rel; }

TEST(Generate, Stories260kGreedyReproducesTheAuthorsOutputExactly) {
  const std::string bin = shared_path("models/stories260K/stories260K.bin");
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "shared data not found: " << bin;
  const auto tok = load_tokenizer_for(bin, shared_path("models/stories260K/tok512.bin"));
  CpuExecutor model(load_model_weights(bin), Scheme{});
  GenerateOptions opt;  // empty prompt, 256 steps, temperature 0: llama2.c `run -t 0.0`
  std::string streamed;
  const GenerateResult r = generate(model, *tok, opt, [&](const std::string& p) { streamed += p; });
  std::ifstream f(shared_path("models/stories260K/REFERENCE_GREEDY.txt"), std::ios::binary);
  std::stringstream want;
  want << f.rdbuf();
  EXPECT_EQ(r.text + "\n", want.str());  // run.c ends its output with a newline
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ(r.generated_ids.size(), 256u);
}

TEST(Generate, SamplingIsSeededAndTemperatureMatters) {
  const std::string bin = shared_path("models/stories260K/stories260K.bin");
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "shared data not found: " << bin;
  const auto tok = load_tokenizer_for(bin, shared_path("models/stories260K/tok512.bin"));
  CpuExecutor model(load_model_weights(bin), Scheme{});
  GenerateOptions opt;
  opt.prompt = "Once upon a time";
  opt.steps = 64;
  opt.temperature = 1.0f;
  opt.seed = 7;
  const auto a = generate(model, *tok, opt), b = generate(model, *tok, opt);
  EXPECT_EQ(a.generated_ids, b.generated_ids);
  opt.seed = 8;
  const auto c = generate(model, *tok, opt);
  EXPECT_NE(a.generated_ids, c.generated_ids);
  EXPECT_EQ(a.text.rfind("Once upon a time", 0), 0u) << a.text;  // the prompt is printed first
  opt.steps = 2;  // prompt longer than steps
  EXPECT_THROW(generate(model, *tok, opt), std::invalid_argument);
}

TEST(Generate, StepsBeyondTheModelsContextAreClampedLikeRunC) {
  const std::string bin = shared_path("models/stories260K/stories260K.bin");
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "shared data not found: " << bin;
  const auto tok = load_tokenizer_for(bin, shared_path("models/stories260K/tok512.bin"));
  CpuExecutor model(load_model_weights(bin), Scheme{});
  GenerateOptions opt;
  opt.steps = 100000;  // stories260K: seq_len 512
  opt.temperature = 1.0f;
  const GenerateResult r = generate(model, *tok, opt);
  EXPECT_LE(r.prompt_ids.size() + r.generated_ids.size(), 513u);
  // the sequence was freed: the executor's next one is created from scratch at full length
  const SeqId s = model.create_sequence(512);
  EXPECT_EQ(model.sequence_length(s), 0);
}

// temperature must be finite and >= 0, top_p finite and in (0, 1]: anything else is refused, never
// read as another setting (top_p 0 used to behave like 1).
TEST(Generate, BadSamplingParametersAreRefused) {
  const std::string bin = shared_path("models/stories260K/stories260K.bin");
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "shared data not found: " << bin;
  const auto tok = load_tokenizer_for(bin, shared_path("models/stories260K/tok512.bin"));
  CpuExecutor model(load_model_weights(bin), Scheme{});
  auto message = [&](float t, float p) {
    GenerateOptions opt;
    opt.steps = 4;
    opt.temperature = t;
    opt.top_p = p;
    try {
      generate(model, *tok, opt);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  for (float t : {nan, inf, -1.0f}) EXPECT_NE(message(t, 0.9f).find("temperature"), std::string::npos) << t;
  for (float p : {nan, 0.0f, -0.5f, 1.5f, inf}) EXPECT_NE(message(1.0f, p).find("top_p"), std::string::npos) << p;
  EXPECT_EQ(message(1.0f, 1.0f), "accepted");
  EXPECT_EQ(message(0.0f, 0.9f), "accepted");
}

TEST(Generate, GreedyPicksTheFirstMaximum) {
  const float logits[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  uint64_t rng = 1;
  EXPECT_EQ(sample_token(logits, 5, 0.0f, 0.9f, rng), 1);
  // top-p keeps only the most likely tokens: with p tiny, always the argmax
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, 5, 1.0f, 1e-6f, rng) % 2, 1);
  // top_p <= 0 through the step API is that limit (the most likely token), never the whole vocabulary
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, 5, 100.0f, 0.0f, rng), 1);
}

}  // namespace
