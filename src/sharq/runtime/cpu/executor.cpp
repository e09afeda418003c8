#include "sharq/runtime/cpu/executor.h"

#include <cmath>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/runtime/sampler.h"

namespace sharq {

CpuExecutor::CpuExecutor(const ModelWeights& weights, const Scheme& scheme)
    : model_(std::make_shared<const Transformer>(weights, scheme)) {}

CpuExecutor::CpuExecutor(std::shared_ptr<const Transformer> model) : model_(std::move(model)) {
  if (!model_) throw std::invalid_argument("CpuExecutor: no model");
}

SeqId CpuExecutor::create_sequence(int64_t max_len) {
  const int64_t max_pos = config().max_position_embeddings;
  if (max_len < 1) throw std::invalid_argument(fmt::format("create_sequence: max length {} must be >= 1", max_len));
  if (max_pos > 0 && max_len > max_pos)
    throw std::invalid_argument(fmt::format("create_sequence: max length {} exceeds the model's max_position_embeddings {}",
                                            max_len, max_pos));
  const SeqId id = next_id_++;
  seqs_.emplace(id, Sequence{model_->new_cache(max_len), false, 0});
  return id;
}

CpuExecutor::Sequence& CpuExecutor::find(SeqId seq, const char* what) {
  const auto it = seqs_.find(seq);
  if (it == seqs_.end())
    throw std::invalid_argument(fmt::format("{}: sequence {} is unknown ({})", what, seq,
                                            seq >= 0 && seq < next_id_ ? "already freed" : "never created"));
  return it->second;
}

const CpuExecutor::Sequence& CpuExecutor::find(SeqId seq, const char* what) const {
  return const_cast<CpuExecutor*>(this)->find(seq, what);
}

void CpuExecutor::free_sequence(SeqId seq) {
  find(seq, "free_sequence");
  seqs_.erase(seq);
}

int64_t CpuExecutor::sequence_length(SeqId seq) const { return find(seq, "sequence_length").cache.len; }
int64_t CpuExecutor::sequence_capacity(SeqId seq) const { return find(seq, "sequence_capacity").cache.capacity; }

StepOutput CpuExecutor::step(const std::vector<StepEntry>& batch) {
  const int64_t V = config().vocab_size;
  // ---- the whole batch is checked before any sequence changes
  std::vector<ForwardSegment> segs;
  std::vector<Sequence*> seq_of;
  std::set<SeqId> seen;
  for (const StepEntry& e : batch) {
    Sequence& s = find(e.seq, "step");
    if (!seen.insert(e.seq).second)
      throw std::invalid_argument(fmt::format("step: sequence {} appears more than once in the batch", e.seq));
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    if (n == 0) throw std::invalid_argument(fmt::format("step: sequence {} has no new tokens", e.seq));
    if (e.position != s.cache.len)
      throw std::invalid_argument(fmt::format("step: sequence {}: position {} given, but the sequence holds {} tokens (its next "
                                              "position is {})", e.seq, e.position, s.cache.len, s.cache.len));
    if (s.cache.len + n > s.cache.capacity)
      throw std::invalid_argument(fmt::format("step: sequence {}: {} tokens at position {} exceed its max length {}", e.seq, n,
                                              e.position, s.cache.capacity));
    for (int32_t t : e.tokens)
      if (t < 0 || t >= V)
        throw std::invalid_argument(fmt::format("step: sequence {}: token id {} outside the vocabulary (size {})", e.seq, t, V));
    if (e.sampling && !(std::isfinite(e.sampling->temperature) && e.sampling->temperature >= 0.0f &&
                        std::isfinite(e.sampling->top_p)))
      throw std::invalid_argument(fmt::format("step: sequence {}: sampling needs a finite temperature >= 0 and a finite top_p "
                                              "(got {}, {})", e.seq, e.sampling->temperature, e.sampling->top_p));
    segs.push_back(ForwardSegment{e.tokens.data(), n, &s.cache, e.all_logits});
    seq_of.push_back(&s);
  }

  StepOutput out;
  out.vocab = V;
  int64_t total = 0;
  for (const ForwardSegment& g : segs) {
    out.first_row.push_back(total);
    out.rows.push_back(g.all_logits ? g.n : 1);
    total += out.rows.back();
  }
  out.logits.resize(static_cast<size_t>(total * V));
  model_->forward_batch(segs, out.logits.data(), observer_);

  out.sampled.resize(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i].sampling) continue;
    const SamplingParams& p = *batch[i].sampling;
    Sequence& s = *seq_of[i];
    if (!s.rng_seeded) {
      s.rng = sampler_state(p.seed);
      s.rng_seeded = true;
    }
    out.sampled[i] = sample_token(out.last_logits_of(i), V, p.temperature, p.top_p, s.rng);
  }
  return out;
}

}  // namespace sharq
