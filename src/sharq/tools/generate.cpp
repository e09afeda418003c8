#include "sharq/tools/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

namespace sharq {
namespace {

// xorshift64*: a tiny, fully specified generator, so that a seed gives the same text everywhere.
float next_uniform(uint64_t& s) {
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return static_cast<float>((s * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;  // [0, 1)
}

}  // namespace

int32_t sample_token(const float* logits, int64_t vocab, float temperature, float top_p, uint64_t& rng) {
  if (temperature <= 0.0f) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
  }
  std::vector<double> p(static_cast<size_t>(vocab));
  const float mx = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += p[i] = std::exp((logits[i] - mx) / temperature);
  for (auto& v : p) v /= sum;
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  int64_t n = vocab;
  if (top_p > 0.0f && top_p < 1.0f) {  // smallest set of most likely tokens whose mass reaches top_p
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    double cum = 0.0;
    for (n = 0; n < vocab;) {
      cum += p[idx[n++]];
      if (cum >= top_p) break;
    }
  }
  double mass = 0.0;
  for (int64_t i = 0; i < n; ++i) mass += p[idx[i]];
  const double r = static_cast<double>(next_uniform(rng)) * mass;
  double cdf = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cdf += p[idx[i]];
    if (r < cdf) return idx[i];
  }
  return idx[n - 1];
}

GenerateResult generate(const Transformer& model, const Tokenizer& tok, const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_text) {
  if (opt.steps < 1) throw std::invalid_argument("generate: steps must be >= 1");
  GenerateResult res;
  res.prompt_ids = tok.encode(opt.prompt, true);
  if (res.prompt_ids.empty()) {
    if (tok.bos_id() < 0) throw std::invalid_argument("generate: empty prompt and the tokenizer has no BOS token");
    res.prompt_ids.push_back(tok.bos_id());
  }
  const int64_t n_prompt = static_cast<int64_t>(res.prompt_ids.size());
  if (n_prompt > opt.steps)
    throw std::invalid_argument(fmt::format("generate: the prompt has {} tokens, more than steps = {}", n_prompt, opt.steps));
  const int64_t V = model.config().vocab_size;
  KVCache cache = model.new_cache(opt.steps);
  std::vector<float> logits(static_cast<size_t>(V));
  uint64_t rng = opt.seed ? opt.seed : 0x9E3779B97F4A7C15ull;
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

  const auto t0 = std::chrono::steady_clock::now();
  model.forward(res.prompt_ids.data(), n_prompt, cache, logits.data(), false);  // one-batch prefill
  const auto t1 = std::chrono::steady_clock::now();
  int32_t token = res.prompt_ids.back();
  for (int64_t pos = n_prompt; pos <= opt.steps; ++pos) {
    const int32_t next = sample_token(logits.data(), V, opt.temperature, opt.top_p, rng);
    if (next == tok.eos_id() || next == tok.bos_id()) break;
    res.generated_ids.push_back(next);
    emit(token, next);
    token = next;
    if (pos == opt.steps) break;
    model.forward(&token, 1, cache, logits.data(), false);
  }
  const auto t2 = std::chrono::steady_clock::now();
  res.prefill_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  res.decode_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
  return res;
}

}  // namespace sharq
