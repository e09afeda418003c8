// The one token sampler of sharq (llama2.c `run` semantics), used by `generate` and by every
// executor's step API, so that a seed gives the same text whatever drives the model.
//
// temperature 0: greedy, the first maximum. Otherwise softmax(logits / temperature) in double,
// restricted to the smallest set of most likely tokens whose mass reaches top_p when top_p < 1
// (nucleus; top_p <= 0 keeps only the most likely token, the limit of that rule, never the whole
// vocabulary), then one draw of xorshift64* scaled by the kept mass. `generate` refuses top_p
// outside (0, 1] before it gets here.
#pragma once

#include <cstdint>

namespace sharq {

// Index of the sampled token. `rng_state` carries the generator between calls (see
// sampler_state).
int32_t sample_token(const float* logits, int64_t vocab, float temperature, float top_p, uint64_t& rng_state);

// One draw in [0, 1) of the xorshift64* stream (advances `rng_state`): what sample_token draws when
// temperature > 0. The GPU engine draws here and samples on the device with it.
float sampler_next_uniform(uint64_t& rng_state);

// The log-probability (natural log, temperature 1) of token `tok` under softmax(logits).
float token_logprob(const float* logits, int64_t vocab, int32_t tok);

// The generator state a seed starts from (xorshift cannot leave 0, so seed 0 maps to a constant).
uint64_t sampler_state(uint64_t seed);

}  // namespace sharq
