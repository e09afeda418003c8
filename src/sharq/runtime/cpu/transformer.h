// Decoder-only transformer forward pass on the CPU (FP32 compute): Llama 2/3/3.1, Mistral,
// Qwen2/2.5, Qwen3, Mixtral, Qwen3-MoE.
//
// What is quantized (SHARQ_SPEC "Where it is applied"): the seven projections of every block
// (q, k, v, o, gate, up, down) and every MoE expert's gate/up/down go through the chosen scheme.
// Embeddings, lm_head, the MoE router, norms and attention stay FP32. q/k/v read one prepared
// input, as do gate/up. A prefill runs all its tokens through each linear as one M x K matrix, so
// per-tensor activation scales see the whole window, as in the paper's reference code; a batch of
// several sequences (forward_batch) concatenates all their new tokens into one such matrix.
//
// Built from ModelWeights (model/weights.h): each weight is converted to FP32 one tensor at a
// time, quantized into its Linear and the FP32 copy dropped. The weights of a quantized checkpoint
// (NVFP4) and 16-bit embeddings and lm_head are instead read where they lie in the checkpoint's
// mapped files, which the Transformer then keeps alive (ModelWeights::storage()): loading an 8B
// NVFP4 checkpoint holds its file once and no FP32 or second packed copy of any weight. Weight
// names, tying, RoPE and MoE routing come from model/ (weights.h, rope.h, moe_routing.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sharq/model/moe_routing.h"
#include "sharq/model/weights.h"
#include "sharq/runtime/cpu/linear.h"

namespace sharq {

struct KVCache {
  int64_t capacity = 0, len = 0;
  int64_t kv_dim = 0;
  std::vector<std::vector<float>> k, v;  // per layer: capacity x kv_dim
};

// Per-call hook for analysis tools (`sharq analyze`) and calibration (`sharq quantize
// --calib-data`): called with each projection input (after preparation is decided, before it):
// layer index, projection name ("q_proj" for the input q/k/v share, "o_proj", "gate_proj" for the
// input gate/up share, "down_proj", "experts.gate_up", "experts.down"), the M x K input. MoE
// inputs also go to on_expert_input with the expert's index (by default it forwards to on_input).
// Without an observer the forward pass does nothing extra (one null check per projection).
struct ProjectionObserver {
  virtual ~ProjectionObserver() = default;
  virtual void on_input(int64_t layer, const char* proj, const float* x, int64_t M, int64_t K) = 0;
  virtual void on_expert_input(int64_t layer, int64_t /*expert*/, const char* proj, const float* x, int64_t M, int64_t K) {
    on_input(layer, proj, x, M, K);
  }
};

// One sequence's part of a batched forward pass: n new tokens appended to `cache` at positions
// cache->len .. cache->len + n - 1; its logits rows are all n (all_logits) or the last one.
struct ForwardSegment {
  const int32_t* tokens = nullptr;
  int64_t n = 0;
  KVCache* cache = nullptr;
  bool all_logits = false;
};

class Transformer {
 public:
  // Builds every linear of the checkpoint under `scheme` (weights quantized once, here). The
  // Transformer keeps no reference to `weights`, only (where it reads weights in place) to the
  // memory behind them.
  Transformer(const ModelWeights& weights, const Scheme& scheme);
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const Scheme& scheme() const { return scheme_; }

  KVCache new_cache(int64_t capacity) const;

  // Runs tokens[0..T) at positions cache.len .. cache.len + T - 1 and appends them to the cache.
  // logits: T x vocab (all_logits) or 1 x vocab (the last position only).
  void forward(const int32_t* tokens, int64_t T, KVCache& cache, float* logits, bool all_logits,
               ProjectionObserver* observer = nullptr) const;

  // Several sequences in one pass: every linear layer sees all segments' new tokens as one
  // M x hidden matrix (M = sum of n); attention runs per segment against its own cache. logits:
  // the segments' rows in order. Everything is checked before any cache changes
  // (std::invalid_argument): n >= 1, distinct caches, room in each cache, tokens in the vocabulary.
  void forward_batch(const std::vector<ForwardSegment>& segments, float* logits,
                     ProjectionObserver* observer = nullptr) const;

 private:
  struct Layer;
  ModelConfig cfg_;
  Scheme scheme_;
  std::vector<float> embed_;       // vocab x hidden, FP32; empty when read in place from embed_view_
  TensorView embed_view_;          // the embeddings in their source dtype (kept alive by storage_)
  std::shared_ptr<const void> storage_;
  std::vector<float> final_norm_;  // hidden
  std::unique_ptr<Linear> lm_head_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<float> inv_freq_;    // head_dim / 2 RoPE frequencies (with llama3 scaling applied)
  MoeRouting routing_;
};

}  // namespace sharq
