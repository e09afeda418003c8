// The step API: the one interface every executor implements (runtime/cpu's CpuExecutor now, the
// CUDA engine next) and everything above it drives (generate, ppl, eval, the server's scheduler).
//
// An executor owns a model under one scheme and the KV caches of its sequences. A sequence is
// created with the largest number of positions it will ever hold (its KV cache is sized by it, up
// to the model's max_position_embeddings) and freed when done; ids are never reused, so a freed id
// stays an error. step() runs one batch: each entry appends new tokens (a prefill chunk or one
// decode token) to its own sequence, at the KV position the caller states, and gets back logits
// rows and, when it asked, a sampled token.
//
// Contract (docs/runtime.md):
//   - entries are independent: an entry's logits and sampled token depend only on its sequence's
//     tokens and its sampling parameters, never on the other entries of the batch, for every
//     scheme whose activation scales are per token (all defaults). Per-tensor activation scales
//     (`nvfp4:tensor`, `sharq:tensor`) are batch-dependent by definition: they see the whole
//     batch's M x K matrix, as a real engine would compute them.
//   - the whole batch is validated before any work: an unknown or freed sequence, a sequence twice
//     in one batch, no new tokens, a position other than the sequence's current length, more
//     positions than the sequence's max length, a token outside the vocabulary or bad sampling
//     parameters throw std::invalid_argument naming the sequence, and no sequence changes.
//   - step() is not thread-safe; one caller drives an executor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "sharq/model/config.h"

namespace sharq {

class ModelWeights;
struct Scheme;

using SeqId = int64_t;

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (the first maximum)
  float top_p = 0.9f;        // nucleus mass when temperature > 0 (>= 1: plain sampling)
  // Seeds the sequence's generator on its first sampled step; later steps continue that stream,
  // so a sequence's tokens depend only on its seed and its history (sampler.h).
  uint64_t seed = 42;
};

struct StepEntry {
  SeqId seq = -1;
  std::vector<int32_t> tokens;  // the new tokens: a prefill chunk or one decode token (not empty)
  int64_t position = 0;         // KV position of tokens[0]: must equal the sequence's current length
  bool all_logits = false;      // logits of every new position; else only of the last one
  std::optional<SamplingParams> sampling;  // sample one token from the last position's logits
  // false: no logits rows come back for this entry (rows 0): a prefill chunk that only fills the
  // KV cache, or a decode step that only needs its sampled token (the GPU engine then copies back
  // token ids and log-probabilities only)
  bool return_logits = true;
};

struct StepOutput {
  int64_t vocab = 0;
  std::vector<float> logits;           // the entries' rows, in batch order: rows x vocab
  std::vector<int64_t> first_row;      // per entry: its first row in `logits`
  std::vector<int64_t> rows;           // per entry: tokens.size() (all_logits) or 1; 0 without return_logits
  std::vector<std::optional<int32_t>> sampled;  // per entry: the sampled token, when asked
  std::vector<float> logprob;          // per entry: the sampled token's log-probability (natural log,
                                       // temperature 1, sampler.h token_logprob); NaN when not sampled

  // Row r (0-based, < rows[entry]) of an entry's logits.
  const float* logits_of(size_t entry, int64_t r = 0) const {
    return logits.data() + (first_row[entry] + r) * vocab;
  }
  // The last position's logits of an entry.
  const float* last_logits_of(size_t entry) const { return logits_of(entry, rows[entry] - 1); }
};

// Helpers every executor shares, so that the contract above is checked and shaped in one place.
//
// The length and capacity of a sequence, from the executor's table; throws std::invalid_argument
// for an unknown or freed id (the executor words it).
struct SequenceExtent {
  int64_t length = 0, capacity = 0;
};
using SequenceLookup = std::function<SequenceExtent(SeqId)>;
// Validates a whole batch before any work (the contract above); throws std::invalid_argument
// naming the sequence.
void check_step_batch(const std::vector<StepEntry>& batch, int64_t vocab, const SequenceLookup& lookup);
// An output with the rows of every entry laid out (logits sized, not filled; sampled empty,
// logprob NaN). ignore_return_logits: as if every entry returned its logits (executors that compute
// every row on the host sample from this shape, then drop the rows nobody asked for with
// drop_unreturned_logits).
StepOutput shape_step_output(const std::vector<StepEntry>& batch, int64_t vocab, bool ignore_return_logits = false);
void drop_unreturned_logits(const std::vector<StepEntry>& batch, StepOutput& out);
// A sequence's sampling generator: seeded from its SamplingParams on its first sampled step, then
// carried across steps (sampler.h).
struct SamplerStream {
  bool seeded = false;
  uint64_t state = 0;
};
// Samples the entries that asked for it from their last logits row (and sets their logprob);
// stream_of(i) is the generator of entry i's sequence.
void sample_step(const std::vector<StepEntry>& batch, StepOutput& out,
                 const std::function<SamplerStream&(size_t entry)>& stream_of);
// create_sequence's check: 1 <= max_len <= max_position_embeddings (when the config states one).
void check_sequence_max_len(int64_t max_len, const ModelConfig& config);
// The error for an id that is not in an executor's table (`next_id`: the next id it would give).
[[noreturn]] void throw_unknown_sequence(const char* what, SeqId id, SeqId next_id);

class Executor {
 public:
  virtual ~Executor() = default;
  virtual const ModelConfig& config() const = 0;

  // A new, empty sequence whose KV cache holds max_len positions; std::invalid_argument when
  // max_len < 1 or max_len > max_position_embeddings (when the config states one).
  virtual SeqId create_sequence(int64_t max_len) = 0;
  // Releases the sequence's KV cache; std::invalid_argument for an unknown or freed id.
  virtual void free_sequence(SeqId seq) = 0;
  // Tokens the sequence holds (the position its next token takes).
  virtual int64_t sequence_length(SeqId seq) const = 0;
  virtual int64_t sequence_capacity(SeqId seq) const = 0;

  virtual StepOutput step(const std::vector<StepEntry>& batch) = 0;

  // The KV-cache blocks the executor's sequences share, and the positions per block: a scheduler
  // must not promise more (the GPU engine's paged cache). 0: no shared pool, each sequence's cache
  // is sized at create_sequence (the CPU runtime).
  virtual int64_t kv_blocks() const { return 0; }
  virtual int64_t kv_block_size() const { return 0; }
};

// Builds an executor for one scheme. Front ends (generate, ppl, eval, the server) take one, so that
// the same code drives the CPU reference (cpu_executor_factory, runtime/cpu/executor.h) or the GPU
// engine (gpu_executor_factory, runtime/cuda/engine.h, in sharq_cuda).
using ExecutorFactory = std::function<std::unique_ptr<Executor>(const ModelWeights&, const Scheme&)>;

}  // namespace sharq
