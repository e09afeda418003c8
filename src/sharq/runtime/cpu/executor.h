// CpuExecutor: the step API (runtime/step.h) on the CPU reference forward pass.
//
// One step concatenates all entries' new tokens into one M x hidden matrix for every linear
// layer, as a batching engine does, and runs attention per sequence against its own KV cache
// (Transformer::forward_batch). With per-token activation scales every row's result is
// independent of the others (the GEMM and attention are per row), so an entry's logits are bit for
// bit those of its sequence run alone; tests/runtime/cpu/executor_test.cpp checks it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "sharq/runtime/cpu/transformer.h"
#include "sharq/runtime/step.h"

namespace sharq {

class CpuExecutor final : public Executor {
 public:
  // Builds the model under `scheme` (the executor keeps no reference to `weights`).
  CpuExecutor(const ModelWeights& weights, const Scheme& scheme);
  // Shares an already built model (several executors, or a test that also calls it directly).
  explicit CpuExecutor(std::shared_ptr<const Transformer> model);

  const ModelConfig& config() const override { return model_->config(); }
  const Scheme& scheme() const { return model_->scheme(); }
  SeqId create_sequence(int64_t max_len) override;
  void free_sequence(SeqId seq) override;
  int64_t sequence_length(SeqId seq) const override;
  int64_t sequence_capacity(SeqId seq) const override;
  StepOutput step(const std::vector<StepEntry>& batch) override;

  // CPU-only: every projection input of the following steps goes to `observer` (nullptr: none),
  // for `sharq analyze`.
  void set_observer(ProjectionObserver* observer) { observer_ = observer; }

 private:
  struct Sequence {
    KVCache cache;
    SamplerStream sampler;
  };
  Sequence& find(SeqId seq, const char* what);
  const Sequence& find(SeqId seq, const char* what) const;

  std::shared_ptr<const Transformer> model_;
  std::map<SeqId, Sequence> seqs_;
  SeqId next_id_ = 0;
  ProjectionObserver* observer_ = nullptr;
};

// The CPU reference executor, as an ExecutorFactory (the default of every front end).
ExecutorFactory cpu_executor_factory();

}  // namespace sharq
