// `sharq bench model`: whole-model latency and throughput of the GPU engine (runtime/cuda/engine.h)
// for several schemes in one run, on a checkpoint or on random weights of a real architecture's
// shapes generated on the GPU (--synthetic llama3.1-8b | qwen2.5-7b | qwen3-8b | qwen3-30b-a3b | mixtral-8x7b).
//
// Per scheme (one engine at a time):
//   - load time (weights built and quantized on the device) and weight bytes;
//   - prefill latency of B x N-token prompts (default 1x512, 1x2048, 8x2048): wall time of one
//     step() with every prompt in it, the first token sampled greedily on the GPU; median of 3
//     after a warm-up;
//   - decode tok/s at batch 1, 8, 32, 64 after a 1024-token context per sequence: wall time of 32
//     steps of one token per sequence (greedy on the GPU, no logits copied back), after 4 warm-up
//     steps (the CUDA graph of the bucket is captured there);
//   - the per-component breakdown of a batch-1 decode step and of the first prefill of 2048 tokens
//     (profiled eagerly with events between components: quantized GEMMs, prep, attention,
//     norms/RoPE/other, lm_head, sampling), and the same-run linears alone (time_linears);
//   - ratios vs fp16 and fp8 when they are in the run; the card and the same-run copy bandwidth.
// The engine issue's targets are printed with the figures they compare.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sharq {

struct BenchModelOptions {
  std::string model;       // a checkpoint (HF directory or llama2.c .bin), or empty with synthetic
  std::string synthetic;   // llama3.1-8b | qwen2.5-7b | qwen3-8b | qwen3-30b-a3b | mixtral-8x7b
  std::string schemes = "fp16,fp8,w4a16,nvfp4,sharq,sharq:merged";
  std::vector<std::string> prefill = {"1x512", "1x2048", "8x2048"};  // BxN
  std::vector<int64_t> batches = {1, 8, 32, 64};
  int64_t context = 1024;
  int steps = 32;
  uint64_t seed = 1;
  std::string fusion = "none";  // FP4 preps: all | norm | swiglu | none (EngineOptions fuse_norm / fuse_swiglu)
  std::string reduce_fusion = "all";  // FP4 split-K reductions: all | norm | swiglu | none (EngineOptions fuse_reduce_*)
  std::string gemm_residual = "on";  // fp16, bf16: on | off (EngineOptions::gemm_residual)
  std::string prune_last_layer = "on";  // on | off (EngineOptions::prune_last_layer)
  int64_t gemv16_max_m = 1;  // fp16, bf16: 0 .. 4 (EngineOptions::gemv16_max_m)
  double torch_tok_s = 0;  // the same run's torch CUDA-graph decode (scripts/device/torch_decode_peer.py); 0: none
  std::string csv;   // write one CSV row per scheme here
  std::string svg;   // write the breakdown plot here
  bool quiet = false;
};

// Prints to stdout (progress on stderr). Defined in sharq_cuda only.
int run_bench_model(const BenchModelOptions& opt);

}  // namespace sharq
