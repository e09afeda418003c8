// The GPU executor: the step API (runtime/step.h) on an H100/H200, for the dense architectures
// (Llama 2/3/3.1, Mistral with its sliding window, Qwen2/2.5, Qwen3) and every GPU scheme
// (quant/scheme.h: fp16, bf16, fp8, w4a16, nvfp4, sharq exact / merged / w16, p48 | s24,
// token | tensor).
//
// First increment of the engine issue, correctness first:
//   - weights: every projection a GpuLinear (quantized on the host with the shared quantizers, as
//     the CPU runtime does, and uploaded once); embeddings BF16; norms FP32; lm_head unquantized
//     (BF16, or FP16 for the fp16 scheme) with FP32 logits;
//   - activations: FP32 residual stream, BF16 (FP16 for fp16) linear inputs and outputs; q/k/v
//     share one prepared input, as do gate/up;
//   - a paged KV cache (fixed-size blocks, a block table per sequence, reference-counted blocks)
//     sized at construction; attention by paged_attention.h;
//   - a step concatenates all sequences' new tokens into one M x hidden matrix (prefill chunks and
//     decode tokens together); per-token activation scales make each sequence's logits independent
//     of the others (tested);
//   - one host-to-device copy of the step's metadata, one device-to-host copy of the logits rows
//     asked for; sampling on the host with the one sampler (runtime/sampler.h).
// Not yet (the engine issue's next increments): CUDA-graph capture of the decode step, flash
// attention kernels, GPU sampling, weights quantized on the GPU, fused RMSNorm+prep and SwiGLU+prep.
// MoE models are refused (a later issue).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "sharq/model/weights.h"
#include "sharq/quant/scheme.h"
#include "sharq/runtime/step.h"

namespace sharq::cuda {

struct EngineOptions {
  int64_t max_batch_tokens = 512;  // rows (new tokens of all sequences) of one step, at most
  int64_t kv_blocks = 0;           // KV-cache blocks; 0: from the free device memory and gpu_memory
  double gpu_memory = 0.9;         // the fraction of the free memory the KV cache may take (kv_blocks 0)
  int block_size = 16;             // positions per KV block
};

class GpuExecutor final : public Executor {
 public:
  // Throws std::invalid_argument for a scheme or architecture the GPU does not run (naming it),
  // std::runtime_error when there is no CUDA device or the weights / KV cache do not fit.
  GpuExecutor(const ModelWeights& weights, const Scheme& scheme, const EngineOptions& opt = {});
  ~GpuExecutor() override;
  GpuExecutor(const GpuExecutor&) = delete;
  GpuExecutor& operator=(const GpuExecutor&) = delete;

  const ModelConfig& config() const override;
  const Scheme& scheme() const;
  SeqId create_sequence(int64_t max_len) override;
  void free_sequence(SeqId seq) override;
  int64_t sequence_length(SeqId seq) const override;
  int64_t sequence_capacity(SeqId seq) const override;
  // Also throws std::invalid_argument when the step has more than max_batch_tokens rows or the KV
  // cache has no free block left (before any work; no sequence changes).
  StepOutput step(const std::vector<StepEntry>& batch) override;

  size_t weight_bytes() const;
  int64_t kv_blocks() const;
  int64_t free_kv_blocks() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The GPU engine as an ExecutorFactory, every executor built with `opt` (size max_batch_tokens
// and kv_blocks for the job: several executors share the card).
ExecutorFactory gpu_executor_factory(const EngineOptions& opt);

}  // namespace sharq::cuda
