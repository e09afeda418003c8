// Rotary position embeddings as the checkpoints define them, stated once for every executor.
//
// Inverse frequencies are computed as Hugging Face does in FP32 (1 / theta^(2j/d)), then the
// config's rope_scaling (llama3: long wavelengths divided by `factor`, a smooth band between).
// The pairing is the config's: llama2.c rotates adjacent pairs (2j, 2j+1) ("interleaved"), HF
// checkpoints rotate halves (j, j + d/2).
#pragma once

#include <cstdint>
#include <vector>

#include "sharq/model/config.h"

namespace sharq {

// head_dim / 2 inverse frequencies, scaling applied.
std::vector<float> rope_inv_freq(const ModelConfig& c);

// The two elements of a head vector that frequency j rotates together.
struct RopePair {
  int64_t a, b;
};
inline RopePair rope_pair(int64_t j, int64_t head_dim, bool interleaved) {
  return interleaved ? RopePair{2 * j, 2 * j + 1} : RopePair{j, j + head_dim / 2};
}

// Rotates one head vector of `head_dim` values in place to position `pos` (the FP32 reference:
// angle = pos * inv_freq[j] in FP32, then cos/sin).
void apply_rope(float* v, int64_t head_dim, const float* inv_freq, int64_t pos, bool interleaved);

}  // namespace sharq
