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

// The generator state a seed starts from (xorshift cannot leave 0, so seed 0 maps to a constant).
uint64_t sampler_state(uint64_t seed);

}  // namespace sharq
