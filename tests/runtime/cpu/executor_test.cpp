// The step API on the CPU executor: a batch mixing prefills and a decode of different sequences
// gives each sequence logits bit-identical to running it alone (for every per-token scheme, dense
// and MoE models), while a per-tensor activation scale is batch-dependent by definition; sampling
// streams are per sequence; every malformed batch is refused whole, naming the sequence.
#include "sharq/runtime/cpu/executor.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "sharq/runtime/sampler.h"

namespace {

using namespace sharq;

std::string model_path(const std::string& name) {
  if (name == "stories260K") return std::string(SHARQ_SOURCE_DIR) + "/../shared/models/stories260K/stories260K.bin";
  return std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny/" + name;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  ADD_FAILURE() << "no std::invalid_argument thrown";
  return {};
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "'" << (part) << "' not in: " << (msg)

StepEntry entry(SeqId seq, std::vector<int32_t> tokens, int64_t position, bool all_logits) {
  StepEntry e;
  e.seq = seq;
  e.tokens = std::move(tokens);
  e.position = position;
  e.all_logits = all_logits;
  return e;
}

std::vector<float> rows_of(const StepOutput& o, size_t i) {
  return std::vector<float>(o.logits_of(i), o.logits_of(i) + o.rows[i] * o.vocab);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Sequence A: a 5-token prefill; B: a 4-token prefill, then one decode token; C: a 3-token
// prefill, of which only the last position's logits are asked for.
const std::vector<int32_t> kA = {1, 17, 99, 3, 200}, kB0 = {1, 42, 7, 8}, kB1 = {120}, kC = {1, 250, 33};

struct MixedResult {
  std::vector<float> a, b1, c;  // logits: A all 5 rows, B's decode row, C's last row
};

MixedResult run_alone(CpuExecutor& ex) {
  MixedResult r;
  const SeqId a = ex.create_sequence(16), b = ex.create_sequence(16), c = ex.create_sequence(16);
  r.a = rows_of(ex.step({entry(a, kA, 0, true)}), 0);
  ex.step({entry(b, kB0, 0, false)});
  r.b1 = rows_of(ex.step({entry(b, kB1, 4, false)}), 0);
  r.c = rows_of(ex.step({entry(c, kC, 0, false)}), 0);
  for (SeqId s : {a, b, c}) ex.free_sequence(s);
  return r;
}

MixedResult run_mixed(CpuExecutor& ex) {
  MixedResult r;
  const SeqId a = ex.create_sequence(16), b = ex.create_sequence(16), c = ex.create_sequence(16);
  ex.step({entry(b, kB0, 0, false)});  // B's own earlier prefill
  const StepOutput o = ex.step({entry(a, kA, 0, true), entry(b, kB1, 4, false), entry(c, kC, 0, false)});
  EXPECT_EQ(o.rows, (std::vector<int64_t>{5, 1, 1}));
  EXPECT_EQ(o.first_row, (std::vector<int64_t>{0, 5, 6}));
  EXPECT_EQ(static_cast<int64_t>(o.logits.size()), 7 * o.vocab);
  r.a = rows_of(o, 0);
  r.b1 = rows_of(o, 1);
  r.c = rows_of(o, 2);
  EXPECT_EQ(ex.sequence_length(a), 5);
  EXPECT_EQ(ex.sequence_length(b), 5);
  EXPECT_EQ(ex.sequence_length(c), 3);
  for (SeqId s : {a, b, c}) ex.free_sequence(s);
  return r;
}

class MixedBatch : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {};

TEST_P(MixedBatch, EachSequenceGetsItsAloneLogitsBitForBit) {
  const auto [model, scheme] = GetParam();
  const std::string path = model_path(model);
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "model not found: " << path;
  CpuExecutor ex(load_model_weights(path), parse_scheme(scheme));
  const MixedResult alone = run_alone(ex), mixed = run_mixed(ex);
  EXPECT_TRUE(same_bits(alone.a, mixed.a)) << model << " " << scheme << ": sequence A (5-token prefill)";
  EXPECT_TRUE(same_bits(alone.b1, mixed.b1)) << model << " " << scheme << ": sequence B (decode at position 4)";
  EXPECT_TRUE(same_bits(alone.c, mixed.c)) << model << " " << scheme << ": sequence C (3-token prefill, last row)";
}

INSTANTIATE_TEST_SUITE_P(PerTokenSchemes, MixedBatch,
                         ::testing::Combine(::testing::Values("stories260K", "llama3", "qwen3", "mixtral", "qwen3_moe"),
                                            ::testing::Values("fp32", "sharq", "nvfp4", "fp8")));

TEST(MixedBatchPerTensorScale, IsBatchDependentByDefinition) {
  // sharq:tensor takes one activation scale over the whole M x K matrix of the step, so a
  // sequence's logits depend on what it is batched with; the step API states this exception.
  for (const char* model : {"stories260K", "llama3"}) {
    const std::string path = model_path(model);
    if (!std::filesystem::exists(path)) continue;
    CpuExecutor ex(load_model_weights(path), parse_scheme("sharq:tensor"));
    const MixedResult alone = run_alone(ex), mixed = run_mixed(ex);
    EXPECT_FALSE(same_bits(alone.a, mixed.a) && same_bits(alone.b1, mixed.b1) && same_bits(alone.c, mixed.c)) << model;
    // and it is still deterministic: the same batch twice gives the same bits
    const MixedResult again = run_mixed(ex);
    EXPECT_TRUE(same_bits(mixed.a, again.a) && same_bits(mixed.b1, again.b1) && same_bits(mixed.c, again.c)) << model;
  }
}

TEST(StepApi, SamplingStreamsArePerSequence) {
  CpuExecutor ex(load_model_weights(model_path("llama3")), Scheme{});
  const SamplingParams p{1.0f, 0.9f, 7}, q{0.8f, 1.0f, 123};
  // alone: each sequence's own tokens over 6 decode steps
  auto run = [&](bool together) {
    std::vector<std::vector<int32_t>> toks(2);
    const SeqId s0 = ex.create_sequence(16), s1 = ex.create_sequence(16);
    const SeqId ids[2] = {s0, s1};
    const SamplingParams params[2] = {p, q};
    std::vector<int32_t> last = {5, 9};
    std::vector<std::vector<int32_t>> prompts = {{1, 5}, {1, 60, 9}};
    std::vector<int64_t> pos = {0, 0};
    for (int step = 0; step < 6; ++step) {
      std::vector<StepEntry> batch;
      for (int i = 0; i < 2; ++i) {
        StepEntry e = entry(ids[i], step == 0 ? prompts[i] : std::vector<int32_t>{last[i]}, pos[i], false);
        e.sampling = params[i];
        batch.push_back(e);
      }
      if (together) {
        const StepOutput o = ex.step(batch);
        for (int i = 0; i < 2; ++i) last[i] = *o.sampled[i];
      } else {
        for (int i = 0; i < 2; ++i) last[i] = *ex.step({batch[i]}).sampled[0];
      }
      for (int i = 0; i < 2; ++i) {
        pos[i] += static_cast<int64_t>(batch[i].tokens.size());
        toks[i].push_back(last[i]);
      }
    }
    ex.free_sequence(s0);
    ex.free_sequence(s1);
    return toks;
  };
  const auto alone = run(false), together = run(true);
  EXPECT_EQ(alone, together);
  EXPECT_NE(alone[0], alone[1]);

  // the executor's sampler is runtime/sampler.h seeded once per sequence
  const SeqId s = ex.create_sequence(8);
  StepEntry e = entry(s, {1, 5}, 0, false);
  e.sampling = p;
  const StepOutput o = ex.step({e});
  uint64_t rng = sampler_state(p.seed);
  EXPECT_EQ(*o.sampled[0], sample_token(o.last_logits_of(0), o.vocab, p.temperature, p.top_p, rng));
  EXPECT_FALSE(ex.step({entry(s, {3}, 2, false)}).sampled[0].has_value());  // not asked: no token
}

TEST(StepApi, MalformedBatchesAreRefusedWholeNamingTheSequence) {
  CpuExecutor ex(load_model_weights(model_path("llama3")), Scheme{});
  ASSERT_EQ(ex.config().max_position_embeddings, 128);
  EXPECT_HAS(error_of([&] { ex.create_sequence(0); }), "max length 0 must be >= 1");
  EXPECT_HAS(error_of([&] { ex.create_sequence(129); }), "max length 129 exceeds the model's max_position_embeddings 128");

  const SeqId a = ex.create_sequence(4), b = ex.create_sequence(8);
  EXPECT_EQ(ex.sequence_capacity(a), 4);
  const StepEntry ok = entry(b, {1, 2}, 0, true);
  auto refused = [&](const StepEntry& bad) {
    const std::string msg = error_of([&] { ex.step({ok, bad}); });
    EXPECT_EQ(ex.sequence_length(b), 0) << "a refused batch must leave every sequence unchanged: " << msg;
    return msg;
  };
  std::string msg = refused(entry(a, {1, 2}, 1, false));
  EXPECT_HAS(msg, "sequence " + std::to_string(a) + ": position 1 given, but the sequence holds 0 tokens");
  msg = refused(entry(a, {}, 0, false));
  EXPECT_HAS(msg, "sequence " + std::to_string(a) + " has no new tokens");
  msg = refused(entry(a, {1, 2, 3, 4, 5}, 0, false));
  EXPECT_HAS(msg, "sequence " + std::to_string(a) + ": 5 tokens at position 0 exceed its max length 4");
  msg = refused(entry(a, {1, 256}, 0, false));
  EXPECT_HAS(msg, "sequence " + std::to_string(a) + ": token id 256 outside the vocabulary (size 256)");
  msg = refused(entry(b, {3}, 0, false));
  EXPECT_HAS(msg, "sequence " + std::to_string(b) + " appears more than once in the batch");
  msg = refused(entry(999, {1}, 0, false));
  EXPECT_HAS(msg, "sequence 999 is unknown (never created)");
  StepEntry bad_sampling = entry(a, {1}, 0, false);
  bad_sampling.sampling = SamplingParams{-1.0f, 0.9f, 1};
  msg = refused(bad_sampling);
  EXPECT_HAS(msg, "sequence " + std::to_string(a) + ": sampling needs a finite temperature >= 0");

  // positions advance with the sequence; a stale position is refused
  ex.step({entry(a, {1, 2}, 0, false)});
  EXPECT_EQ(ex.sequence_length(a), 2);
  EXPECT_HAS(error_of([&] { ex.step({entry(a, {3}, 0, false)}); }), "position 0 given, but the sequence holds 2 tokens (its next position is 2)");
  ex.step({entry(a, {3, 4}, 2, false)});
  EXPECT_HAS(error_of([&] { ex.step({entry(a, {5}, 4, false)}); }), "1 tokens at position 4 exceed its max length 4");

  // freed ids stay errors, and are never reused
  ex.free_sequence(a);
  EXPECT_HAS(error_of([&] { ex.step({entry(a, {1}, 0, false)}); }), "sequence " + std::to_string(a) + " is unknown (already freed)");
  EXPECT_HAS(error_of([&] { ex.free_sequence(a); }), "already freed");
  EXPECT_HAS(error_of([&] { ex.sequence_length(a); }), "already freed");
  EXPECT_NE(ex.create_sequence(4), a);
  EXPECT_TRUE(ex.step({}).logits.empty());  // an empty batch is a no-op
}

}  // namespace
