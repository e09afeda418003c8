// The GPU executor: the step API (runtime/step.h) on an H100/H200, for the dense architectures
// (Llama 2/3/3.1, Mistral with its sliding window, Qwen2/2.5, Qwen3), the MoE architectures (Mixtral,
// Qwen3-MoE) and every GPU scheme
// (quant/scheme.h: fp16, bf16, fp8, w4a16, nvfp4, sharq exact / merged / w16, p48 | s24,
// token | tensor).
//
//   - weights: every projection a GpuLinear, quantized once at load on the GPU by the shared
//     quantizers (kernels/cuda/weight_quant.h: the CPU runtime's bytes); embeddings BF16; norms FP32;
//     lm_head unquantized (BF16, or FP16 for the fp16 scheme) with FP32 logits. A SyntheticModel
//     generates random weights of a real architecture's shapes on the GPU (bench model);
//   - activations: FP32 residual stream, BF16 (FP16 for fp16) linear inputs and outputs; q/k/v
//     are one GpuLinear stacked along N (one prep, one GEMM; with FP4 weights each keeps its own
//     scale), as are gate/up; each residual add is fused with the next RMSNorm;
//   - a paged KV cache (fixed-size blocks, a block table per sequence, reference-counted blocks)
//     sized at construction; attention by paged_attention.h (split-KV decode, tiled prefill);
//   - a step concatenates all sequences' new tokens into one M x hidden matrix (prefill chunks and
//     decode tokens together); per-token activation scales make each sequence's logits independent
//     of the others (tested);
//   - a decode step (one token per entry) is padded to a batch-size bucket and replayed from a CUDA
//     graph captured once per bucket (schemes with per-token scales; the padding rows write only a
//     reserved KV block). Eager decode steps run the same padded shapes, so replay and eager are
//     bit-identical;
//   - one host-to-device copy of the step's metadata; sampling on the GPU (kernels/cuda/sampling.h),
//     so a step sends back token ids and log-probabilities, plus the logits rows asked for.
//   - mixture-of-experts models (Mixtral, Qwen3-MoE): the FP32 router and top-k on the GPU
//     (kernels/cuda/moe.h, model/moe_routing.h's rule), the tokens permuted to their experts (the
//     prepared input gathered: the activation prep runs once per token), each expert's GEMMs on its
//     own rows, the weighted outputs added in expert order. The experts' row counts come back to the
//     host once per MoE layer, so MoE steps run eagerly (no CUDA graph) for now.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "sharq/model/weights.h"
#include "sharq/quant/scheme.h"
#include "sharq/runtime/step.h"

namespace sharq::cuda {

struct EngineOptions {
  int64_t max_batch_tokens = 512;  // rows (new tokens of all sequences) of one step, at most
  int64_t max_logit_rows = 0;      // logits rows of one step (returned or sampled), at most; 0: max_batch_tokens
  int64_t kv_blocks = 0;           // KV-cache blocks; 0: from the free device memory and gpu_memory
  double gpu_memory = 0.9;         // the fraction of the free memory the KV cache may take (kv_blocks 0)
  int block_size = 16;             // positions per KV block
  bool cuda_graphs = true;         // replay decode steps from CUDA graphs (per-token schemes)
  // The FP4 schemes (nvfp4, sharq): the residual add + RMSNorm inside the q/k/v and gate/up
  // activation preps, and SwiGLU inside the down projection's prep (false: the separate kernels,
  // as the other schemes run them). The same logits either way (bit for bit on the tiny models).
  // Off by default because they are slower on an H200 (docs/perf/engine.md, E15): every prep block
  // makes its own pass over the whole row (the norm's sum, SwiGLU's amax) before its spans, which
  // costs more than the separate one-block norm and SwiGLU kernels it saves. Decode b1 sharq
  // 235.8 tok/s separate vs 220.7 fused; `sharq bench model --fusion` measures it.
  bool fuse_norm = false;
  bool fuse_swiglu = false;
  // The FP4 schemes' split-K reduction (decode-sized steps) runs the layer's successor: the
  // residual add + RMSNorm after o and down (fuse_reduce_norm), SwiGLU after gate/up
  // (fuse_reduce_swiglu) (GpuLinear::fuses), one kernel less each. The separate kernels'
  // arithmetic on the same BF16 output; only the norm's sum of squares is added in another order
  // (docs/numerics.md). Ignored where a fused prep above takes the successor.
  bool fuse_reduce_norm = true;
  bool fuse_reduce_swiglu = true;
  // fp16, bf16: o's and down's product is added to the FP32 residual stream inside cuBLASLt's GEMM
  // (GpuLinear::gemm_accumulate: beta = 1, C = D = the residual), so the add + RMSNorm kernel after
  // it reads the residual alone. The traffic moves into the GEMM's epilogue rather than going away
  // (per add at a 1x2048 Llama-3.1-8B prefill the norm moves 50 MB less, the GEMM 50 MB more): the
  // prefill is unchanged, the batch-1 decode step about 2% faster (docs/perf/engine.md, E51). The
  // product is not rounded to FP16 / BF16 before the add (one rounding less, as the CPU's FP32
  // residual add of the FP32 product). false: the GEMM writes the 16-bit product and the norm kernel
  // adds it.
  bool gemm_residual = true;
  // fp16, bf16: steps of at most gemv16_max_m rows (0 .. kGemv16MaxM = 4; 0: none) run their linears
  // through the 16-bit GEMV (kernels/cuda/gemv16.h) rather than cuBLASLt: its weights start
  // streaming before the preceding kernel ends (PDL), and it computes the RMSNorm in front of q/k/v
  // and gate/up and the SwiGLU in front of down itself, three kernels less per layer. The norm's sum
  // of squares runs in the GEMV's order (last bits; docs/numerics.md). Measured on an H200
  // (docs/perf/engine.md, eighteenth increment): the batch-1 step 4.6 -> 4.3 ms, but a batch of 4
  // 18% slower than cuBLASLt (the GEMV is bound by its instructions there), hence 1.
  int64_t gemv16_max_m = 1;
  // A step in which fewer rows need logits than it computes (a prefill: its last row; a chunk: none)
  // runs the last layer's o projection, MLP and final norm for those rows only (llama.cpp's
  // inp_out_ids): its attention still covers every row, and every row's K and V are written. A
  // 2048-token prompt skips 2047 rows of one layer's o, gate/up and down (about 1/32 of the linears).
  // The logits are the same up to the GEMMs' row-count-dependent order (the cuBLASLt algorithm, the
  // FP4 family: docs/numerics.md). Off in batch-invariant mode and with per-tensor activation
  // scales (whose amax would cover the logits rows alone); decode graphs give every row a logits
  // row, so it never applies there.
  bool prune_last_layer = true;
  // Every row's attention by the decode kernel, and one split-K order in the prefill GEMM family for
  // every M: a row's logits are bit-identical whatever else shares the step, prefill chunks included
  // (the default is invariant for decode rows only).
  bool batch_invariant = false;
};

// Random weights with the shapes of a real architecture (model/config.h synthetic_model_config),
// generated on the GPU: uniform values of standard deviation 0.02, norms 1.
struct SyntheticModel {
  ModelConfig config;
  uint64_t seed = 1;
};

// Per-component GPU time of one profiled step (set_profiling), microseconds.
struct StepProfile {
  double total_us = 0.0;               // first kernel start to last kernel end
  std::map<std::string, double> us;    // gemm, prep, attention, norms_rope_other, lm_head, sampling;
                                       // norms_rope_other = other.norm + other.rope_kv + other.swiglu + other.rest
                                       // (+ moe.route + moe.permute); gemm includes moe.gemm (MoE models)
  std::map<std::string, int> segments;  // how often the step entered each component (other.* included):
                                        // e.g. the separate norm kernels it launched
};

class GpuExecutor final : public Executor {
 public:
  // Throws std::invalid_argument for a scheme or architecture the GPU does not run (naming it),
  // std::runtime_error when there is no CUDA device or the weights / KV cache do not fit.
  GpuExecutor(const ModelWeights& weights, const Scheme& scheme, const EngineOptions& opt = {});
  GpuExecutor(const SyntheticModel& model, const Scheme& scheme, const EngineOptions& opt = {});
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
  // MoE models: the weight bytes of one expert of one layer (gate/up + down; every expert is alike), 0 otherwise.
  size_t expert_weight_bytes() const;
  double load_seconds() const;  // building the weights on the device (quantization included)
  int64_t kv_blocks() const override;  // usable blocks (one more is reserved for the padding rows)
  int64_t kv_block_size() const override;
  int64_t free_kv_blocks() const;
  int64_t graphs_captured() const;
  // Steps whose last layer ran for their logits rows only (EngineOptions::prune_last_layer).
  int64_t steps_pruned() const;

  // Benchmarks: profiled steps record events between the components (a decode step inside a
  // one-off CUDA graph, with the events as record nodes; other steps eagerly); the
  // linears alone (prepare + gemm of every layer for M rows, then lm_head for lm_rows rows; with
  // prune_last_layer and lm_rows < M, the last layer's o, gate/up and down for lm_rows rows, as a
  // step runs them), back to back, timed on the GPU (median of `reps`), in microseconds. cublas:
  // the fp16 / bf16 linears through cuBLASLt whatever M, after the separate norm and SwiGLU (the
  // baseline of the engine issue's step bound); false: as a step runs them (the GEMV where it does).
  void set_profiling(bool on);
  const StepProfile& last_profile() const;
  double time_linears(int64_t M, int64_t lm_rows, int reps, bool cublas = false);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The GPU engine as an ExecutorFactory, every executor built with `opt` (size max_batch_tokens
// and kv_blocks for the job: several executors share the card).
ExecutorFactory gpu_executor_factory(const EngineOptions& opt);

}  // namespace sharq::cuda
