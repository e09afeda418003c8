// Text generation: greedy or sampled (temperature, top-p, seed), llama2.c `run` semantics, on any
// executor of the step API (runtime/step.h).
//
// The prompt (BOS + encoded text; BOS alone for an empty prompt) is prefilled as one step, then
// tokens are sampled one step at a time until `steps` positions are used (prompt included, as in
// llama2.c; like run.c, steps beyond the model's max_position_embeddings are clamped to it) or
// the model emits EOS or BOS. Sampling is the step API's (runtime/sampler.h). Logits that are not
// finite (a NaN/Inf model loaded with allow_nonfinite) stop generation (GenerateResult::nonfinite_at
// says where) rather than sampling a meaningless token; the CLI prints a warning.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sharq/model/tokenizer.h"
#include "sharq/runtime/step.h"

namespace sharq {

struct GenerateOptions {
  std::string prompt;
  int64_t steps = 256;
  float temperature = 0.0f;  // 0 = greedy (argmax, first maximum); finite, >= 0
  float top_p = 0.9f;        // nucleus sampling when temperature > 0, in (0, 1] (1: plain sampling);
                             // 0, NaN or > 1 is an error (0 would otherwise read as 1)
  uint64_t seed = 42;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids, generated_ids;
  std::string text;       // decoded generated tokens, streamed the way llama2.c prints them
  double prefill_ms = 0, decode_ms = 0;
  int64_t nonfinite_at = -1;  // >= 0: generation stopped because this position's logits were NaN/Inf
};

// on_text, when given, receives each piece as soon as it is decoded. Uses one sequence of
// `executor` for the call and frees it before returning (also on an error).
GenerateResult generate(Executor& executor, const Tokenizer& tok, const GenerateOptions& opt,
                        const std::function<void(const std::string&)>& on_text = {});

}  // namespace sharq
