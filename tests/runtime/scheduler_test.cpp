// The serving scheduler on the real CPU executor and stories260K: every request gets exactly the
// tokens `generate` gives for its prompt and seed, however it is batched, chunked or preempted;
// blocks come back on finish and cancel; stop strings and the queue bound behave as documented.
#include "sharq/runtime/scheduler.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <thread>

#include "sharq/model/weights.h"
#include "sharq/quant/scheme.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/tools/generate.h"

namespace {

using namespace sharq;
using namespace std::chrono_literals;

std::string shared_path(const std::string& rel) { return std::string(SHARQ_SOURCE_DIR) + "/../shared/" + rel; }

struct Stories {
  std::unique_ptr<Tokenizer> tok;
  std::shared_ptr<const Transformer> model;
};

const Stories* stories() {
  static const Stories* s = [] () -> const Stories* {
    const std::string bin = shared_path("models/stories260K/stories260K.bin");
    if (!std::filesystem::exists(bin)) return nullptr;
    auto* st = new Stories;
    st->tok = load_tokenizer_for(bin, shared_path("models/stories260K/tok512.bin"));
    st->model = std::make_shared<const Transformer>(load_model_weights(bin), Scheme{});
    return st;
  }();
  return s;
}

#define REQUIRE_STORIES()                                                   \
  const Stories* S = stories();                                             \
  if (!S) GTEST_SKIP() << "shared/models/stories260K not found";

struct Collected {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  StreamDelta last;
};

// Steps the scheduler on this thread until every stream finished (bounded), collecting outputs.
std::vector<Collected> drive(Scheduler& s, const std::vector<std::shared_ptr<RequestStream>>& streams) {
  std::vector<Collected> out(streams.size());
  for (int it = 0; it < 100000; ++it) {
    bool all = true;
    for (size_t i = 0; i < streams.size(); ++i) {
      StreamDelta d = streams[i]->wait_delta(0ms);
      out[i].text += d.text;
      out[i].tokens.insert(out[i].tokens.end(), d.tokens.begin(), d.tokens.end());
      out[i].logprobs.insert(out[i].logprobs.end(), d.logprobs.begin(), d.logprobs.end());
      if (d.finished) out[i].last = d;
      all = all && out[i].last.finished;
    }
    if (all) return out;
    s.step();
  }
  ADD_FAILURE() << "the scheduler did not finish its requests";
  return out;
}

GenerateResult reference(const Stories& st, const std::string& prompt, int64_t steps, float temperature, uint64_t seed) {
  CpuExecutor ex(st.model);
  GenerateOptions o;
  o.prompt = prompt;
  o.steps = steps;
  o.temperature = temperature;
  o.seed = seed;
  return generate(ex, *st.tok, o);
}

// The generated tokens' text as a stream writes it (decode_step after the prompt's last token).
std::string stepped_text(const Tokenizer& tok, const GenerateResult& g) {
  std::string t;
  int32_t prev = g.prompt_ids.back();
  for (int32_t id : g.generated_ids) {
    t += tok.decode_step(prev, id);
    prev = id;
  }
  return t;
}

CompletionRequest request_for(const Stories& st, const std::string& prompt, int64_t steps, float temperature, uint64_t seed) {
  CompletionRequest r;
  r.prompt = encode_prompt(*st.tok, prompt);
  r.max_tokens = steps - static_cast<int64_t>(r.prompt.size()) + 1;  // generate's -n counts the prompt
  r.sampling = SamplingParams{temperature, 0.9f, seed};
  return r;
}

TEST(Scheduler, OneRequestGivesTheTokensOfGenerateWithTheSameSeed) {
  REQUIRE_STORIES();
  for (float temperature : {0.0f, 0.8f}) {
    const GenerateResult want = reference(*S, "Once upon a time", 96, temperature, 7);
    CpuExecutor ex(S->model);
    Scheduler s(ex, *S->tok, SchedulerOptions{});
    auto stream = s.submit(request_for(*S, "Once upon a time", 96, temperature, 7));
    const auto got = drive(s, {stream});
    EXPECT_EQ(got[0].tokens, want.generated_ids) << "temperature " << temperature;
    EXPECT_EQ(got[0].text, stepped_text(*S->tok, want));
    EXPECT_EQ(want.text.substr(want.text.size() - got[0].text.size()), got[0].text);
    EXPECT_EQ(got[0].last.completion_tokens, static_cast<int64_t>(want.generated_ids.size()));
    EXPECT_EQ(got[0].last.prompt_tokens, static_cast<int64_t>(want.prompt_ids.size()));
    EXPECT_EQ(got[0].logprobs.size(), got[0].tokens.size());
    for (float lp : got[0].logprobs) EXPECT_LE(lp, 0.0f);
    EXPECT_EQ(s.metrics().kv_blocks_used, 0);
  }
}

TEST(Scheduler, BatchedChunkedAndPreemptedRequestsKeepTheirOwnTokens) {
  REQUIRE_STORIES();
  const std::vector<std::string> prompts{"Once upon a time", "The cat", "Lily and Ben went to the park to play with a big red ball",
                                         "", "A dog"};
  SchedulerOptions o;
  o.max_num_batched_tokens = 7;  // prompts are prefilled in chunks, next to the decodes
  o.max_num_seqs = 4;
  o.block_size = 4;
  o.max_model_len = 128;
  o.kv_blocks = 40;  // fewer than 4 sequences of 128 positions: decodes preempt
  CpuExecutor ex(S->model);
  Scheduler s(ex, *S->tok, o);
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<GenerateResult> want;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const float t = i % 2 ? 0.0f : 1.0f;
    streams.push_back(s.submit(request_for(*S, prompts[i], 100, t, 100 + i)));
    want.push_back(reference(*S, prompts[i], 100, t, 100 + i));
  }
  const auto got = drive(s, streams);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i].tokens, want[i].generated_ids) << "request " << i;
  const SchedulerMetrics m = s.metrics();
  EXPECT_GT(m.preemptions, 0);
  EXPECT_EQ(m.kv_blocks_used, 0);
  EXPECT_EQ(m.running, 0);
  EXPECT_EQ(m.requests_finished, static_cast<int64_t>(prompts.size()));
}

TEST(Scheduler, StopStringsAreCutFromTheOutputAndEndTheRequest) {
  REQUIRE_STORIES();
  const GenerateResult want = reference(*S, "Once upon a time", 128, 0.0f, 1);
  CpuExecutor ex(S->model);
  Scheduler s(ex, *S->tok, SchedulerOptions{});
  CompletionRequest r = request_for(*S, "Once upon a time", 128, 0.0f, 1);
  const std::string full = stepped_text(*S->tok, want);
  ASSERT_GT(full.size(), 40u);
  const std::string stop = full.substr(30, 6);
  r.stop = {stop, "never appears in a story #"};
  const auto got = drive(s, {s.submit(r)});
  EXPECT_EQ(got[0].text, full.substr(0, full.find(stop)));
  EXPECT_EQ(got[0].last.finish_reason, "stop");
  EXPECT_EQ(s.metrics().kv_blocks_used, 0);
}

TEST(Scheduler, IgnoreEosKeepsGoingToMaxTokens) {
  REQUIRE_STORIES();
  CpuExecutor ex(S->model);
  Scheduler s(ex, *S->tok, SchedulerOptions{});
  for (uint64_t seed = 1; seed < 40; ++seed) {  // a seed whose story ends before 300 tokens
    const GenerateResult g = reference(*S, "The end", 300, 1.0f, seed);
    CompletionRequest r = request_for(*S, "The end", 300, 1.0f, seed);
    if (static_cast<int64_t>(g.generated_ids.size()) == r.max_tokens) continue;
    auto plain = drive(s, {s.submit(r)});
    EXPECT_EQ(plain[0].last.finish_reason, "stop");
    EXPECT_EQ(plain[0].tokens, g.generated_ids);
    r.ignore_eos = true;
    auto all = drive(s, {s.submit(r)});
    EXPECT_EQ(all[0].last.finish_reason, "length");
    EXPECT_EQ(static_cast<int64_t>(all[0].tokens.size()), r.max_tokens);
    EXPECT_EQ(std::vector<int32_t>(all[0].tokens.begin(), all[0].tokens.begin() + g.generated_ids.size()), g.generated_ids);
    return;
  }
  GTEST_SKIP() << "no seed ended its story early";
}

TEST(Scheduler, CancelFreesTheBlocksAtOnce) {
  REQUIRE_STORIES();
  CpuExecutor ex(S->model);
  Scheduler s(ex, *S->tok, SchedulerOptions{});
  CompletionRequest r = request_for(*S, "Once upon a time", 200, 1.0f, 3);
  r.ignore_eos = true;
  auto a = s.submit(r), b = s.submit(r);
  for (int i = 0; i < 5; ++i) s.step();
  EXPECT_GT(s.metrics().kv_blocks_used, 0);
  s.cancel(a);
  s.cancel(b);
  s.step();
  EXPECT_TRUE(a->finished());
  EXPECT_EQ(a->wait_delta(0ms).finish_reason, "cancelled");
  const SchedulerMetrics m = s.metrics();
  EXPECT_EQ(m.kv_blocks_used, 0);
  EXPECT_EQ(m.requests_cancelled, 2);
  EXPECT_FALSE(s.step());  // nothing left
}

TEST(Scheduler, TheQueueIsBoundedAndBadRequestsAreRefused) {
  REQUIRE_STORIES();
  CpuExecutor ex(S->model);
  SchedulerOptions o;
  o.max_queue = 2;
  o.max_model_len = 64;
  Scheduler s(ex, *S->tok, o);
  CompletionRequest r = request_for(*S, "Hi", 10, 0.0f, 1);
  s.submit(r);
  s.submit(r);
  EXPECT_THROW(s.submit(r), QueueFull);
  EXPECT_EQ(s.metrics().requests_rejected, 1);
  CompletionRequest bad = r;
  bad.max_tokens = 0;
  EXPECT_THROW(s.submit(bad), InvalidRequest);
  bad = r;
  bad.max_tokens = 64;
  try {
    s.submit(bad);
    ADD_FAILURE() << "a prompt + max_tokens beyond max_model_len was accepted";
  } catch (const InvalidRequest& e) {
    EXPECT_NE(std::string(e.what()).find("maximum context length is 64 tokens"), std::string::npos) << e.what();
  }
  for (int64_t huge : {std::numeric_limits<int64_t>::max() - 1, std::numeric_limits<int64_t>::max()}) {
    bad = r;  // prompt + max_tokens past INT64_MAX: refused, not wrapped to a negative length
    bad.max_tokens = huge;
    try {
      s.submit(bad);
      ADD_FAILURE() << "max_tokens " << huge << " was accepted";
    } catch (const InvalidRequest& e) {
      EXPECT_NE(std::string(e.what()).find("more than"), std::string::npos) << e.what();
    }
  }
  bad = r;
  bad.prompt = {100000};
  EXPECT_THROW(s.submit(bad), InvalidRequest);
  bad = r;
  bad.sampling.top_p = 0.0f;
  EXPECT_THROW(s.submit(bad), InvalidRequest);
}

// An executor that "samples" a fixed script of tokens, so that the stream's text handling can be
// checked on chosen bytes.
class ScriptedExecutor final : public Executor {
 public:
  explicit ScriptedExecutor(std::vector<int32_t> script, int64_t pool = 0) : script_(std::move(script)), pool_(pool) {
    config_.vocab_size = 512;
    config_.max_position_embeddings = 256;
  }
  int64_t kv_blocks() const override { return pool_; }
  int64_t kv_block_size() const override { return pool_ > 0 ? 16 : 0; }
  const ModelConfig& config() const override { return config_; }
  int64_t refuse_from = -1;  // create_sequence throws for sequences >= this one (-1: never)
  SeqId create_sequence(int64_t max_len) override {
    if (refuse_from >= 0 && next_ >= refuse_from) {
      ++next_;
      throw std::invalid_argument("create_sequence: refused (test)");
    }
    len_[next_] = 0;
    cap_[next_] = max_len;
    return next_++;
  }
  void free_sequence(SeqId seq) override { len_.erase(seq); }
  int64_t sequence_length(SeqId seq) const override { return len_.at(seq); }
  int64_t sequence_capacity(SeqId seq) const override { return cap_.at(seq); }
  StepOutput step(const std::vector<StepEntry>& batch) override {
    StepOutput out = shape_step_output(batch, config_.vocab_size);
    for (size_t i = 0; i < batch.size(); ++i) {
      len_[batch[i].seq] += static_cast<int64_t>(batch[i].tokens.size());
      if (batch[i].sampling) {
        out.sampled[i] = script_[at_ % script_.size()];
        ++at_;
        out.logprob[i] = -1.0f;
      }
    }
    return out;
  }

 private:
  ModelConfig config_;
  std::vector<int32_t> script_;
  std::map<SeqId, int64_t> len_, cap_;
  SeqId next_ = 0;
  size_t at_ = 0;
  int64_t pool_ = 0;
};

// An executor with a shared KV pool (the GPU engine) bounds the scheduler's blocks: taken by
// default, a larger --kv-blocks or another block size refused.
TEST(Scheduler, TakesTheExecutorsSharedKvPool) {
  const auto tok = make_token_id_tokenizer(512);
  ScriptedExecutor ex({5}, /*pool=*/40);
  {
    Scheduler s(ex, *tok, SchedulerOptions{});
    EXPECT_EQ(s.metrics().kv_blocks_total, 40);
    EXPECT_EQ(s.options().kv_blocks, 40);
  }
  SchedulerOptions o;
  o.kv_blocks = 24;
  EXPECT_EQ(Scheduler(ex, *tok, o).metrics().kv_blocks_total, 24);
  o.kv_blocks = 41;
  try {
    Scheduler s(ex, *tok, o);
    ADD_FAILURE() << "41 blocks accepted over a pool of 40";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache of 40 blocks"), std::string::npos) << e.what();
  }
  o.kv_blocks = 0;
  o.block_size = 32;
  EXPECT_THROW(Scheduler(ex, *tok, o), std::invalid_argument);
  ScriptedExecutor cpu_like({5});  // no pool: max_num_seqs sequences of max_model_len
  EXPECT_EQ(Scheduler(cpu_like, *tok, SchedulerOptions{}).metrics().kv_blocks_total, 256 * 16);
  // asked for more than max_num_seqs full-length sequences can use, or a length that fits no request
  SchedulerOptions big;
  big.kv_blocks = 256 * 16 + 1;
  try {
    Scheduler s(cpu_like, *tok, big);
    ADD_FAILURE() << "an unusable pool accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("kv_blocks 4097 is more than max_num_seqs 256 sequences"), std::string::npos) << e.what();
  }
  big.kv_blocks = 1000000000000;
  EXPECT_THROW(Scheduler(cpu_like, *tok, big), std::invalid_argument);
  SchedulerOptions one;
  one.max_model_len = 1;
  EXPECT_THROW(Scheduler(cpu_like, *tok, one), std::invalid_argument);
}

// An executor that refuses a sequence at admission fails that request, with the executor's message, and
// the scheduler goes on serving (the exception used to leave step() and end the engine thread).
TEST(Scheduler, AnAdmissionTheExecutorRefusesFailsOnlyThatRequest) {
  const auto tok = make_token_id_tokenizer(512);
  ScriptedExecutor ex({5});
  ex.refuse_from = 1;  // the second sequence
  Scheduler s(ex, *tok, SchedulerOptions{});
  CompletionRequest r;
  r.prompt = {1, 2, 3};
  r.max_tokens = 4;
  r.sampling = SamplingParams{0.0f, 1.0f, 1};
  r.ignore_eos = true;
  const auto a = s.submit(r);
  const auto b = s.submit(r);
  const auto out = drive(s, {a, b});
  EXPECT_EQ(out[0].last.finish_reason, "length");
  EXPECT_EQ(out[0].tokens, (std::vector<int32_t>{5, 5, 5, 5}));
  EXPECT_EQ(out[1].last.finish_reason, "error");
  EXPECT_NE(out[1].last.error.find("refused (test)"), std::string::npos) << out[1].last.error;
  ex.refuse_from = -1;
  const auto c = s.submit(r);  // still serving
  EXPECT_EQ(drive(s, {c})[0].tokens, (std::vector<int32_t>{5, 5, 5, 5}));
}

// A token-id prompt that is not ids is the request's fault (InvalidRequest: HTTP 400).
TEST(Scheduler, TextTheTokenizerRefusesIsAnInvalidRequest) {
  const auto tok = make_token_id_tokenizer(512);
  EXPECT_EQ(encode_prompt(*tok, "1 2 3"), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_THROW(encode_prompt(*tok, "once upon a time"), InvalidRequest);
  EXPECT_THROW(encode_prompt(*tok, "   "), InvalidRequest);  // empty, and no BOS to stand in
}

TEST(Scheduler, StreamsHoldBackSplitCharactersAndPossibleStopStrings) {
  REQUIRE_STORIES();
  // "\xc3\xa9" (e acute) as two byte-fallback tokens (llama2.c: byte b is token b + 3)
  const std::vector<int32_t> e_acute{0xC3 + 3, 0xA9 + 3};
  ASSERT_EQ(S->tok->decode_step(e_acute[0], e_acute[1]), "\xa9");
  ASSERT_EQ(S->tok->decode_step(e_acute[1], e_acute[0]), "\xc3");
  CompletionRequest r;
  r.prompt = {S->tok->bos_id()};
  r.max_tokens = 6;
  {
    ScriptedExecutor ex(e_acute);
    Scheduler s(ex, *S->tok, SchedulerOptions{});
    auto stream = s.submit(r);
    s.step();  // the lead byte alone: nothing to show yet
    StreamDelta d = stream->wait_delta(0ms);
    EXPECT_EQ(d.text, "");
    EXPECT_EQ(d.tokens.size(), 1u);
    s.step();
    EXPECT_EQ(stream->wait_delta(0ms).text, "\xc3\xa9");
  }
  ScriptedExecutor ex(e_acute);
  Scheduler s(ex, *S->tok, SchedulerOptions{});
  r.stop = {"\xc3\xa9\xc3\xa9!"};  // never completes, but its prefixes are held back
  auto stream = s.submit(r);
  std::string text;
  for (int i = 0; i < 4; ++i) {
    s.step();
    text += stream->wait_delta(0ms).text;
  }
  EXPECT_EQ(text, "");  // 2 characters: still a prefix of the stop string
  s.step();             // 2.5: the first character can no longer start it
  text += stream->wait_delta(0ms).text;
  EXPECT_EQ(text, "\xc3\xa9");
  s.step();  // max_tokens: the rest is flushed
  const StreamDelta last = stream->wait_delta(0ms);
  EXPECT_EQ(text + last.text, "\xc3\xa9\xc3\xa9\xc3\xa9");
  EXPECT_TRUE(last.finished);
  EXPECT_EQ(last.finish_reason, "length");
}

TEST(Scheduler, RunOnAnEngineThreadDrainsOnStop) {
  REQUIRE_STORIES();
  CpuExecutor ex(S->model);
  Scheduler s(ex, *S->tok, SchedulerOptions{});
  std::thread engine([&] { s.run(); });
  auto a = s.submit(request_for(*S, "Once upon a time", 60, 0.5f, 9));
  s.stop(/*drain=*/true);
  engine.join();
  StreamDelta d;
  std::string text;
  for (int i = 0; i < 1000 && !d.finished; ++i) {
    d = a->wait_delta(10ms);
    text += d.text;
  }
  EXPECT_TRUE(d.finished);
  EXPECT_NE(d.finish_reason, "error") << d.error;
  EXPECT_EQ(text, stepped_text(*S->tok, reference(*S, "Once upon a time", 60, 0.5f, 9)));
}

}  // namespace
