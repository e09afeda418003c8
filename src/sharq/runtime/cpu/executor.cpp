#include "sharq/runtime/cpu/executor.h"

#include <stdexcept>

#include <fmt/format.h>


namespace sharq {

CpuExecutor::CpuExecutor(const ModelWeights& weights, const Scheme& scheme)
    : model_(std::make_shared<const Transformer>(weights, scheme)) {}

CpuExecutor::CpuExecutor(std::shared_ptr<const Transformer> model) : model_(std::move(model)) {
  if (!model_) throw std::invalid_argument("CpuExecutor: no model");
}

SeqId CpuExecutor::create_sequence(int64_t max_len) {
  check_sequence_max_len(max_len, config());
  const SeqId id = next_id_++;
  seqs_.emplace(id, Sequence{model_->new_cache(max_len), SamplerStream{}});
  return id;
}

CpuExecutor::Sequence& CpuExecutor::find(SeqId seq, const char* what) {
  const auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw_unknown_sequence(what, seq, next_id_);
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

ExecutorFactory cpu_executor_factory() {
  return [](const ModelWeights& w, const Scheme& s) -> std::unique_ptr<Executor> {
    return std::make_unique<CpuExecutor>(w, s);
  };
}

StepOutput CpuExecutor::step(const std::vector<StepEntry>& batch) {
  const int64_t V = config().vocab_size;
  check_step_batch(batch, V, [this](SeqId id) {  // the whole batch, before any sequence changes
    const Sequence& s = find(id, "step");
    return SequenceExtent{s.cache.len, s.cache.capacity};
  });
  std::vector<ForwardSegment> segs;
  std::vector<Sequence*> seq_of;
  for (const StepEntry& e : batch) {
    Sequence& s = find(e.seq, "step");
    segs.push_back(ForwardSegment{e.tokens.data(), static_cast<int64_t>(e.tokens.size()), &s.cache, e.all_logits});
    seq_of.push_back(&s);
  }
  StepOutput out = shape_step_output(batch, V, /*ignore_return_logits=*/true);
  model_->forward_batch(segs, out.logits.data(), observer_);
  sample_step(batch, out, [&](size_t i) -> SamplerStream& { return seq_of[i]->sampler; });
  drop_unreturned_logits(batch, out);
  return out;
}

}  // namespace sharq
