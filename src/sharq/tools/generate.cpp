#include "sharq/tools/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace sharq {
namespace {

// A sequence of an executor, freed when the scope ends.
class ScopedSequence {
 public:
  ScopedSequence(Executor& ex, int64_t max_len) : ex_(ex), id_(ex.create_sequence(max_len)) {}
  ~ScopedSequence() { ex_.free_sequence(id_); }
  ScopedSequence(const ScopedSequence&) = delete;
  ScopedSequence& operator=(const ScopedSequence&) = delete;
  SeqId id() const { return id_; }

 private:
  Executor& ex_;
  SeqId id_;
};

}  // namespace

GenerateResult generate(Executor& ex, const Tokenizer& tok, const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_text) {
  if (opt.steps < 1) throw std::invalid_argument(fmt::format("generate: steps (-n) must be >= 1, got {}", opt.steps));
  if (!(std::isfinite(opt.temperature) && opt.temperature >= 0.0f))
    throw std::invalid_argument(fmt::format("generate: temperature (-t) must be a finite number >= 0, got {}", opt.temperature));
  if (!(std::isfinite(opt.top_p) && opt.top_p > 0.0f && opt.top_p <= 1.0f))
    throw std::invalid_argument(fmt::format("generate: top_p (--top-p) must be in (0, 1], got {}", opt.top_p));
  const int64_t max_pos = ex.config().max_position_embeddings;
  const int64_t steps = max_pos > 0 ? std::min(opt.steps, max_pos) : opt.steps;  // run.c clamps to seq_len too
  GenerateResult res;
  res.prompt_ids = tok.encode(opt.prompt, true);
  if (res.prompt_ids.empty()) {
    if (tok.bos_id() < 0) throw std::invalid_argument("generate: empty prompt and the tokenizer has no BOS token");
    res.prompt_ids.push_back(tok.bos_id());
  }
  const int64_t n_prompt = static_cast<int64_t>(res.prompt_ids.size());
  if (n_prompt > steps)
    throw std::invalid_argument(fmt::format("generate: the prompt has {} tokens, more than steps = {}", n_prompt, steps));
  auto emit = [&](int32_t prev, int32_t next) {
    const std::string piece = tok.decode_step(prev, next);
    res.text += piece;
    if (on_text) on_text(piece);
  };
  // llama2.c prints the prompt's own tokens (after the BOS) as it walks through them; a tokenizer
  // without BOS (Qwen) starts the text with the first prompt token itself
  if (res.prompt_ids[0] != tok.bos_id()) {
    const std::string first = tok.decode({res.prompt_ids[0]});
    res.text += first;
    if (on_text) on_text(first);
  }
  for (int64_t i = 1; i < n_prompt; ++i) emit(res.prompt_ids[i - 1], res.prompt_ids[i]);

  const ScopedSequence seq(ex, steps);
  StepEntry entry;
  entry.seq = seq.id();
  entry.tokens = res.prompt_ids;  // one-step prefill
  entry.position = 0;
  entry.sampling = SamplingParams{opt.temperature, opt.top_p, opt.seed};
  const auto t0 = std::chrono::steady_clock::now();
  StepOutput out = ex.step({entry});
  const auto t1 = std::chrono::steady_clock::now();
  int32_t token = res.prompt_ids.back();
  for (int64_t pos = n_prompt; pos <= steps; ++pos) {
    const float* logits = out.last_logits_of(0);
    if (!std::all_of(logits, logits + out.vocab, [](float x) { return std::isfinite(x); })) {
      res.nonfinite_at = pos - 1;  // no token can be chosen from them: stop, and say so
      break;
    }
    const int32_t next = *out.sampled[0];
    if (next == tok.eos_id() || next == tok.bos_id()) break;
    res.generated_ids.push_back(next);
    emit(token, next);
    token = next;
    if (pos == steps) break;
    entry.tokens.assign(1, token);
    entry.position = pos;
    out = ex.step({entry});
  }
  const auto t2 = std::chrono::steady_clock::now();
  res.prefill_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  res.decode_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
  return res;
}

}  // namespace sharq
