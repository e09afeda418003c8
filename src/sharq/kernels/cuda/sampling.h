// Token sampling on the GPU, so that a decode step sends back token ids and log-probabilities, not
// logits rows: the one sampler's rules (runtime/sampler.h) with per-row parameters.
//
// For each request r: the logits row L = logits[row * V ..]; greedy (temperature <= 0) takes the
// first maximum; otherwise p_i = exp((L_i - max) / T) / Z (in double). With top_p >= 1 the token is
// where u * Z falls in the cumulative sum in index order (the host walks the vocabulary unsorted);
// otherwise the nucleus is the smallest set of most likely tokens (ties in index order, as the
// host's stable sort) whose mass reaches top_p (top_p <= 0: the most likely), and the token is where
// u * (the nucleus mass) falls in the nucleus' descending cumulative sum. u is the caller's draw in [0, 1) from the
// sequence's own xorshift64* stream (sampler_next_uniform on the host, which advances exactly as
// the host sampler does), so a sequence's tokens depend only on its seed and history, never on the
// other rows. logprob = L_tok - max - log(sum exp(L - max)): the model's log-probability of the
// chosen token at temperature 1 (what an OpenAI-style API reports).
//
// The nucleus and the draw are found by bisection over the logits' order-preserving 32-bit keys
// and a block scan of the ties, with sums in double in another order than the host's sequential
// loop: the token equals the host sampler's except when u * mass lies within a few ulps (double) of
// a cumulative boundary, and greedy is always identical.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace sharq::cuda {

struct SampleRequest {
  int32_t row = 0;            // logits row
  float temperature = 0.0f;   // <= 0: greedy
  float top_p = 1.0f;
  float u = 0.0f;             // the draw in [0, 1) (ignored when greedy)
};

// The device workspace sample_rows needs for up to max_rows requests (size it once).
size_t sample_rows_workspace_bytes(int max_rows);

// n requests (device array); token / logprob: n device outputs. Asynchronous, graph-safe, no
// allocation: the row's maximum and exp-sum are computed over slices of the row by many blocks
// (the workspace holds the slices' results), then one block per request samples.
void sample_rows(const float* logits, int64_t V, const SampleRequest* req, int n, int32_t* token, float* logprob,
                 void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace sharq::cuda
