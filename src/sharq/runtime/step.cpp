#include "sharq/runtime/step.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/runtime/sampler.h"

namespace sharq {

void check_step_batch(const std::vector<StepEntry>& batch, int64_t V, const SequenceLookup& lookup) {
  std::set<SeqId> seen;
  for (const StepEntry& e : batch) {
    const SequenceExtent s = lookup(e.seq);
    if (!seen.insert(e.seq).second)
      throw std::invalid_argument(fmt::format("step: sequence {} appears more than once in the batch", e.seq));
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    if (n == 0) throw std::invalid_argument(fmt::format("step: sequence {} has no new tokens", e.seq));
    if (e.position != s.length)
      throw std::invalid_argument(fmt::format("step: sequence {}: position {} given, but the sequence holds {} tokens (its next "
                                              "position is {})", e.seq, e.position, s.length, s.length));
    if (s.length + n > s.capacity)
      throw std::invalid_argument(fmt::format("step: sequence {}: {} tokens at position {} exceed its max length {}", e.seq, n,
                                              e.position, s.capacity));
    for (int32_t t : e.tokens)
      if (t < 0 || t >= V)
        throw std::invalid_argument(fmt::format("step: sequence {}: token id {} outside the vocabulary (size {})", e.seq, t, V));
    if (e.sampling && !(std::isfinite(e.sampling->temperature) && e.sampling->temperature >= 0.0f &&
                        std::isfinite(e.sampling->top_p)))
      throw std::invalid_argument(fmt::format("step: sequence {}: sampling needs a finite temperature >= 0 and a finite top_p "
                                              "(got {}, {})", e.seq, e.sampling->temperature, e.sampling->top_p));
  }
}

StepOutput shape_step_output(const std::vector<StepEntry>& batch, int64_t V, bool ignore_return_logits) {
  StepOutput out;
  out.vocab = V;
  int64_t total = 0;
  for (const StepEntry& e : batch) {
    out.first_row.push_back(total);
    out.rows.push_back(!e.return_logits && !ignore_return_logits ? 0
                       : e.all_logits                          ? static_cast<int64_t>(e.tokens.size())
                                                               : 1);
    total += out.rows.back();
  }
  out.logits.resize(static_cast<size_t>(total * V));
  out.sampled.resize(batch.size());
  out.logprob.assign(batch.size(), std::numeric_limits<float>::quiet_NaN());
  return out;
}

void drop_unreturned_logits(const std::vector<StepEntry>& batch, StepOutput& out) {
  const int64_t V = out.vocab;
  int64_t w = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t r0 = out.first_row[i], n = batch[i].return_logits ? out.rows[i] : 0;
    if (w != r0 && n > 0)
      std::copy(out.logits.begin() + r0 * V, out.logits.begin() + (r0 + n) * V, out.logits.begin() + w * V);
    out.first_row[i] = w;
    out.rows[i] = n;
    w += n;
  }
  out.logits.resize(static_cast<size_t>(w * V));
}

void sample_step(const std::vector<StepEntry>& batch, StepOutput& out,
                 const std::function<SamplerStream&(size_t)>& stream_of) {
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i].sampling) continue;
    const SamplingParams& p = *batch[i].sampling;
    SamplerStream& s = stream_of(i);
    if (!s.seeded) {
      s.state = sampler_state(p.seed);
      s.seeded = true;
    }
    const float* row = out.last_logits_of(i);
    out.sampled[i] = sample_token(row, out.vocab, p.temperature, p.top_p, s.state);
    out.logprob[i] = token_logprob(row, out.vocab, *out.sampled[i]);
  }
}

void check_sequence_max_len(int64_t max_len, const ModelConfig& c) {
  if (max_len < 1) throw std::invalid_argument(fmt::format("create_sequence: max length {} must be >= 1", max_len));
  if (c.max_position_embeddings > 0 && max_len > c.max_position_embeddings)
    throw std::invalid_argument(fmt::format("create_sequence: max length {} exceeds the model's max_position_embeddings {}",
                                            max_len, c.max_position_embeddings));
}

void throw_unknown_sequence(const char* what, SeqId id, SeqId next_id) {
  throw std::invalid_argument(fmt::format("{}: sequence {} is unknown ({})", what, id,
                                          id >= 0 && id < next_id ? "already freed" : "never created"));
}

}  // namespace sharq
