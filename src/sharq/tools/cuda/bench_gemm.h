// `sharq bench gemm`: CUDA-event benchmark of the GPU linear layers against cuBLASLt, on the linear
// shapes of Llama-3.1-8B and Qwen2.5-7B.
//
// Methods timed per (model, layer, M), each as the median over >= 50 repetitions, every repetition
// timed on its own by a CUDA event pair on one stream (after a warm-up that touches every buffer set):
//   fp16, bf16      cuBLASLt GEMM, X/W/Y of that type, FP32 accumulation
//   fp8             the fp8 scheme: cuBLASLt E4M3 GEMM with per-channel W / per-token X scales
//                   (OUTER_VEC_32F), Y BF16 (GEMM only: X, W pre-quantized)
//   fp8_tensor      cuBLASLt E4M3 GEMM with per-tensor scales: an extra, faster reference column
//   w4a16           GpuLinear(w4a16).forward (NVFP4-16 weights, BF16 X)
//   nvfp4           GpuLinear(nvfp4).forward = NVFP4-16 activation prep + GEMM (W4A4 baseline)
//   exact, merged   GpuLinear(sharq / sharq:merged).forward = SharQ prep + GEMM
//   exact_gemm, merged_gemm   the GEMM alone, on the operands of the last prepare()
//   prep, prep_merged         the SharQ prep alone (GpuLinear::prepare)
//   read            a plain streaming read (16-byte non-coherent loads) of the SharQ W32 payload,
//                   codes + scales: the floor of any kernel that reads those bytes once under the same
//                   timer (launch, ramp-up, drain); rd/exg = t_read / t_exact_gemm
// X is BF16 M x K for every GpuLinear method; W is random N x K (nn.Linear layout).
//
// Cold-L2 methodology: every method rotates over S independent sets of (weights, activations,
// output), S = clamp(ceil(3 * L2 / set_bytes), 1, max_sets) (also capped by free memory), repetition
// i using set i % S; each GpuLinear set is its own GpuLinear (own weights, own prep scratch).
//
// Byte accounting (TB/s = bytes / median time), each operand counted once (compulsory traffic):
//   fp16/bf16    2NK (W) + 2MK (X) + 2MN (Y)
//   fp8          NK + MK (E4M3 W, X) + 8 (two FP32 scales) + 2MN (Y BF16)
//   GpuLinear forward (w4a16, nvfp4, exact, merged):
//                weight_bytes() (E2M1 codes + UE4M3 scales + FP32 g) + 2MK (X BF16) + 2MN (Y BF16);
//                the planes the prep writes and the GEMM reads back are NOT counted (intermediate).
//   *_gemm       weight_bytes() + P * 2 M Kp (FP16 planes read; P = 2 exact, 1 merged)
//                + 4 G (row scales g_x; G = M per token, 1 per tensor) + 2MN (Y)
//   prep*        2MK (X read) + P * 2 M Kp (planes written) + 4 G (g_x written)
//   Kp = round_up(K, 128). TFLOP/s = 2 M N K / t for every GEMM method (nominal useful work: the exact
//   GEMM's doubled MMA work is not counted); none for the prep.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sharq {

struct BenchGemmOptions {
  std::string model;                 // llama3.1-8b | qwen2.5-7b | all; empty: all (quick: llama3.1-8b)
  std::string layers = "all";        // comma-separated: qkv, o, gate_up, down | all
  std::vector<int64_t> m;            // token counts; empty: 1,8,16,64,256,1024,4096 (quick: 1,16,256,4096)
  int reps = 50;                     // timed repetitions per method (at least 50: raised with a warning)
  int warmup = 10;                   // warm-up calls per method (at least one per buffer set)
  int max_sets = 16;                 // cap on the rotating buffer sets per method
  std::string kernel = "auto";       // GpuLinear GEMM kernel: auto | small | prefill
  int splits = 0;                    // FP4 GEMMs: force the split-K count (0: the planner's)
  std::string act_scale = "token";   // SharQ / NVFP4 activation g_x: token | tensor
  std::string mask = "p48";          // SharQ mask: p48 | s24
  uint64_t seed = 1;                 // seed of the random X and W
  int device = 0;                    // CUDA device ordinal
  bool csv = false;                  // CSV to stdout (one row per model, layer, M) instead of tables
  bool quick = false;                // smaller default model / M lists (explicit options still win)
  bool quiet = false;                // no progress (set counts, weight build time) on stderr
};

// Runs the benchmark, printing to stdout (progress and warnings to stderr). Returns 0.
// Throws std::runtime_error (no CUDA device, CUDA/cuBLAS failure) and std::invalid_argument (bad
// option) with a message meant for the user. Defined in sharq_cuda only: a build without CUDA must
// not call it (the CLI reports "built without CUDA" instead).
int run_bench_gemm(const BenchGemmOptions& opt);

}  // namespace sharq
