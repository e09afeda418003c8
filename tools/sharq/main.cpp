// sharq: thin command-line front end over the sharq library.
//
// Every error reaches the user as one line "sharq: error: <what>" and exit status 1; CLI11 usage
// errors exit with CLI11's status (non-zero) and its message.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <exception>
#include <fstream>
#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "sharq/runtime/cpu/linear.h"
#include "sharq/model/tokenizer.h"
#include "sharq/model/weights.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/tools/analyze.h"
#include "sharq/tools/cuda/bench_gemm.h"  // plain C++: the options struct; the function needs SHARQ_HAVE_CUDA
#include "sharq/tools/generate.h"
#include "sharq/tools/opcheck.h"
#include "sharq/tools/perplexity.h"
#include "sharq/tools/zeroshot.h"
#ifdef SHARQ_HAVE_CUDA
#include "sharq/runtime/cuda/engine.h"
#endif

namespace {

constexpr const char* kSchemeHelp =
    "Schemes (comma-separated; options after ':'):\n"
    "  fp32, fp16, bf16         unquantized / rounded operands\n"
    "  fp8                      W8A8 E4M3, per-channel weight and per-token activation scales\n"
    "  w4a16                    NVFP4-16 weights, BF16 activations\n"
    "  nvfp4                    W4A4 NVFP4-16 (the paper's baseline)\n"
    "  mxfp4, hif4              W4A4 MXFP4-32 / HiF4-64\n"
    "  sharq                    SharQ, NVFP4: pair-4:8 backbone (NVFP4-32) + residual (NVFP4-16)\n"
    "  sharq-mxfp4, sharq-hif4  SharQ with MXFP4 / HiF4 (sharq-hif4 defaults to scalar 2:4)\n"
    "Options (any order, defaults omitted from canonical names). Example: sharq:s24:tensor\n";

int cmd_opcheck(const sharq::OpcheckConfig& cfg, bool csv, bool json) {
  const sharq::OpcheckResult r = sharq::run_opcheck(cfg);
  if (json) std::fputs(sharq::format_opcheck_json(r).c_str(), stdout);
  else if (csv) std::fputs(sharq::format_opcheck_csv(r).c_str(), stdout);
  else std::fputs(sharq::format_opcheck_table(r).c_str(), stdout);
  return 0;
}

// --device cuda: the GPU engine (runtime/cuda/engine.h) with a KV cache sized for `max_len`
// positions of one sequence at a time and steps of up to `max_tokens` new tokens.
sharq::ExecutorFactory executor_for(const std::string& device, int64_t max_tokens, int64_t max_len) {
  if (device == "cpu") return sharq::cpu_executor_factory();
#ifdef SHARQ_HAVE_CUDA
  sharq::cuda::EngineOptions o;
  o.max_batch_tokens = std::max<int64_t>(1, max_tokens);
  o.kv_blocks = (std::max<int64_t>(1, max_len) + o.block_size - 1) / o.block_size;
  return sharq::cuda::gpu_executor_factory(o);
#else
  (void)max_tokens;
  (void)max_len;
  throw std::runtime_error("--device cuda: this sharq was built without CUDA (reconfigure with nvcc on the PATH or "
                           "-DSHARQ_CUDA=ON)");
#endif
}

struct GenerateArgs {
  std::string model, tokenizer, scheme = "fp32", device = "cpu";
  sharq::GenerateOptions opt;
  bool stats = false;
};

int cmd_generate(const GenerateArgs& a) {
  const sharq::Scheme scheme = sharq::parse_scheme(a.scheme);
  const auto tok = sharq::load_tokenizer_for(a.model, a.tokenizer);
  const sharq::ModelWeights weights = sharq::load_model_weights(a.model);
  const int64_t ctx = weights.config.max_position_embeddings > 0 ? weights.config.max_position_embeddings : a.opt.steps;
  const int64_t len = std::min<int64_t>(std::max<int64_t>(a.opt.steps, 1), ctx);
  const std::unique_ptr<sharq::Executor> model = executor_for(a.device, len, len)(weights, scheme);
  const auto r = sharq::generate(*model, *tok, a.opt, [](const std::string& piece) {
    std::fputs(piece.c_str(), stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  if (a.stats) {
    const double n = static_cast<double>(r.generated_ids.size());
    std::fprintf(stderr, "%s: %zu prompt tokens in %.1f ms, %zu generated in %.1f ms (%.1f tok/s)\n", a.scheme.c_str(),
                 r.prompt_ids.size(), r.prefill_ms, r.generated_ids.size(), r.decode_ms,
                 r.decode_ms > 0 ? 1000.0 * n / r.decode_ms : 0.0);
  }
  return 0;
}

constexpr const char* kBenchGemmHelp =
    "Methods (median us of >= 50 reps, one CUDA event pair each, rotating buffer sets >= 3x L2):\n"
    "  fp16, bf16               cuBLASLt\n"
    "  fp8                      the fp8 scheme: E4M3, per-channel W / per-token X scales (cuBLASLt, GEMM only)\n"
    "  fp8_tensor               E4M3 with per-tensor scales: an extra, faster reference (GEMM only)\n"
    "  w4a16, nvfp4             GpuLinear forward (nvfp4 = its activation prep + GEMM)\n"
    "  exact, merged            SharQ GpuLinear forward (prep + GEMM); *_gemm: GEMM only\n"
    "  prep, prep_merged        the SharQ activation prep alone\n"
    "TB/s counts W + X + Y once each: fp16/bf16 2NK+2MK+2MN; fp8 NK+MK+4(M+N)+2MN; fp8_tensor NK+MK+8+2MN;\n"
    "GpuLinear forward "
    "weight_bytes()+2MK+2MN (intermediate planes not counted); *_gemm weight_bytes() + FP16 planes\n"
    "2*M*Kp each (exact 2, merged 1) + 4*G (g_x, G = M per token, 1 per tensor) + 2MN; prep 2MK + planes\n"
    "written + 4*G; Kp = round_up(K, 128). TFLOP/s = 2*M*N*K / t. Speedups = t_fp16 or t_fp8 / t_sharq.\n";

int cmd_bench_gemm(const sharq::BenchGemmOptions& o) {
#ifdef SHARQ_HAVE_CUDA
  return sharq::run_bench_gemm(o);
#else
  (void)o;
  throw std::runtime_error("bench gemm: this sharq was built without CUDA (reconfigure with nvcc on the PATH "
                           "or -DSHARQ_CUDA=ON)");
#endif
}

int cmd_ppl(const sharq::PplOptions& o, bool json) {
  const sharq::PplResult r = sharq::run_perplexity(o);
  std::fputs(json ? sharq::format_ppl_json(r).c_str() : sharq::format_ppl_table(r).c_str(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sharq: SharQ W4A4 quantization (sparse FP4 backbone + dense FP4 residual) for LLM inference"};
  app.set_version_flag("--version", "sharq 0.1.0");
  app.require_subcommand(1);

  // ---- opcheck
  sharq::OpcheckConfig oc;
  bool oc_csv = false, oc_json = false;
  auto* op = app.add_subcommand("opcheck", "Operator-level error study of every scheme on one linear layer");
  op->add_option("-M,--m", oc.M, "tokens (rows of X)")->capture_default_str()->check(CLI::NonNegativeNumber);
  op->add_option("-K,--k", oc.K, "in-features")->capture_default_str()->check(CLI::NonNegativeNumber);
  op->add_option("-N,--n", oc.N, "out-features")->capture_default_str()->check(CLI::NonNegativeNumber);
  op->add_option("--seed", oc.seed, "seed of the synthetic X and W")->capture_default_str();
  op->add_option("--schemes", oc.schemes, "comma-separated schemes (see `sharq schemes`)")->capture_default_str();
  op->add_option("--reference", oc.reference, "accuracy reference for 'gap recovered'")->capture_default_str();
  op->add_option("--x", oc.x_path, "activations X (M x K) as .npy: float32, float16 or bfloat16");
  op->add_option("--w", oc.w_path, "weights W (N x K, nn.Linear layout) as .npy");
  op->add_option("--save", oc.save_dir, "write X, W and each scheme's Y and dequantized operands as float32 .npy here");
  op->add_flag("--csv", oc_csv, "CSV output");
  op->add_flag("--json", oc_json, "JSON output");
  op->footer(kSchemeHelp);

  // ---- generate
  GenerateArgs ga;
  auto* gen = app.add_subcommand("generate", "Generate text from a checkpoint (greedy or sampled)");
  gen->add_option("model", ga.model, "Hugging Face model directory or llama2.c .bin checkpoint")->required();
  gen->add_option("--tokenizer", ga.tokenizer, "tokenizer file (tokenizer.json, tokenizer.model or llama2.c tok*.bin)");
  gen->add_option("-p,--prompt", ga.opt.prompt, "prompt text (empty: start from BOS)");
  gen->add_option("-n,--steps", ga.opt.steps, "positions to run, prompt included (llama2.c semantics)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  gen->add_option("-t,--temperature", ga.opt.temperature, "0 = greedy")->capture_default_str()->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", ga.opt.top_p, "nucleus sampling mass")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", ga.opt.seed, "sampling seed")->capture_default_str();
  gen->add_option("--scheme", ga.scheme, "linear-layer scheme (see `sharq schemes`)")->capture_default_str();
  gen->add_option("--device", ga.device, "cpu (the FP32 reference) | cuda (the GPU engine: Hopper)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  gen->add_flag("--stats", ga.stats, "print timing to stderr");

  // ---- ppl
  sharq::PplOptions po;
  bool po_json = false, po_quiet = false;
  auto* ppl = app.add_subcommand("ppl", "Perplexity, KL and top-1 agreement of several schemes over a text file");
  ppl->add_option("model", po.model_path, "Hugging Face model directory or llama2.c .bin checkpoint")->required();
  ppl->add_option("--tokenizer", po.tokenizer_path, "tokenizer file (default: found beside the model)");
  ppl->add_option("--data", po.data_path, "text file (e.g. wiki.test.txt)")->required();
  ppl->add_option("--ctx", po.ctx, "window length in tokens")->capture_default_str();
  ppl->add_option("--max-windows", po.max_windows, "only the first N windows (0 = all)")->capture_default_str();
  ppl->add_option("--schemes", po.schemes, "comma-separated schemes")->capture_default_str();
  ppl->add_option("--reference", po.reference, "reference scheme for delta, KL, top-1 and gap")->capture_default_str();
  std::string ppl_device = "cpu";
  ppl->add_option("--device", ppl_device, "cpu | cuda (default schemes on cuda: bf16,fp8,w4a16,nvfp4,sharq,sharq:merged)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  ppl->add_flag("--json", po_json, "JSON output");
  ppl->add_flag("-q,--quiet", po_quiet, "no progress bar");
  ppl->footer(kSchemeHelp);

  // ---- eval
  sharq::EvalOptions eo;
  bool eo_json = false, eo_quiet = false;
  auto* ev = app.add_subcommand("eval", "Zero-shot accuracy (acc, acc_norm) of several schemes");
  ev->add_option("model", eo.model_path, "Hugging Face model directory or llama2.c .bin checkpoint")->required();
  ev->add_option("--tokenizer", eo.tokenizer_path, "tokenizer file (default: found beside the model)");
  ev->add_option("--tasks", eo.tasks, "comma-separated tasks")->capture_default_str();
  ev->add_option("--schemes", eo.schemes, "comma-separated schemes")->capture_default_str();
  ev->add_option("--data-dir", eo.data_dir, "folder of <task>.jsonl")->capture_default_str();
  ev->add_option("--limit", eo.limit, "first N examples per task (0 = all)")->capture_default_str();
  std::string ev_device = "cpu";
  ev->add_option("--device", ev_device, "cpu | cuda")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  ev->add_flag("--json", eo_json, "JSON output");
  ev->add_flag("-q,--quiet", eo_quiet, "no progress on stderr");

  // ---- analyze
  sharq::AnalyzeOptions ao;
  auto* an = app.add_subcommand("analyze", "Per-layer outlier statistics and per-layer error of each scheme");
  an->add_option("model", ao.model_path, "Hugging Face model directory or llama2.c .bin checkpoint")->required();
  an->add_option("--tokenizer", ao.tokenizer_path, "tokenizer file (default: found beside the model)");
  an->add_option("--data", ao.data_path, "text file")->required();
  an->add_option("--tokens", ao.tokens, "tokens of the file to run")->capture_default_str();
  an->add_option("--schemes", ao.schemes, "comma-separated schemes")->capture_default_str();
  an->add_option("--svg", ao.svg_path, "also write an SVG plot of the per-layer errors here");

  // ---- bench gemm
  sharq::BenchGemmOptions bo;
  auto* bench = app.add_subcommand("bench", "GPU benchmarks (needs a CUDA build and an NVIDIA Hopper GPU)");
  bench->require_subcommand(1);
  auto* bg = bench->add_subcommand(
      "gemm", "Time the GPU linear layers (SharQ, NVFP4, W4A16) against cuBLASLt FP16/BF16/FP8 on LLM shapes");
  bg->add_option("--model", bo.model, "llama3.1-8b | qwen2.5-7b | all, comma-separated (default all; --quick: llama3.1-8b)");
  bg->add_option("--layer", bo.layers, "comma-separated: qkv, o, gate_up, down | all")->capture_default_str();
  bg->add_option("-M,--m", bo.m, "comma-separated token counts (default 1,8,16,64,256,1024,4096; --quick: 1,16,256,4096)")
      ->delimiter(',')->check(CLI::PositiveNumber);
  bg->add_option("--reps", bo.reps, "timed repetitions per method, median reported (at least 50)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  bg->add_option("--warmup", bo.warmup, "warm-up calls per method (at least one per buffer set)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  bg->add_option("--max-sets", bo.max_sets, "cap on the rotating (W, X, Y) buffer sets per method")
      ->capture_default_str()->check(CLI::Range(1, 64));
  bg->add_option("--kernel", bo.kernel, "FP4 GEMM family: auto | small (M <= 64) | prefill")
      ->capture_default_str()->check(CLI::IsMember({"auto", "small", "prefill"}));
  bg->add_option("--act-scale", bo.act_scale, "SharQ/NVFP4 activation scale g_x: token | tensor")
      ->capture_default_str()->check(CLI::IsMember({"token", "tensor"}));
  bg->add_option("--mask", bo.mask, "SharQ mask: p48 | s24")->capture_default_str()->check(CLI::IsMember({"p48", "s24"}));
  bg->add_option("--seed", bo.seed, "seed of the random X and W")->capture_default_str();
  bg->add_option("--device", bo.device, "CUDA device ordinal")->capture_default_str()->check(CLI::NonNegativeNumber);
  bg->add_flag("--csv", bo.csv, "CSV on stdout, one row per (model, layer, M), with a header");
  bg->add_flag("--quick", bo.quick, "fewer shapes: llama3.1-8b, M = 1,16,256,4096 (explicit --model/--m win)");
  bg->add_flag("-q,--quiet", bo.quiet, "no progress on stderr");
  bg->footer(kBenchGemmHelp);

  // ---- schemes
  auto* sc = app.add_subcommand("schemes", "List the linear-layer schemes and their options");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*op) return cmd_opcheck(oc, oc_csv, oc_json);
    if (*gen) return cmd_generate(ga);
    if (*an) {
      const auto r = sharq::run_analyze(ao);
      std::fputs(sharq::format_analyze_table(r).c_str(), stdout);
      if (!ao.svg_path.empty()) {
        std::ofstream svg(ao.svg_path);
        if (!(svg << sharq::render_analyze_svg(r))) throw std::runtime_error(ao.svg_path + ": cannot write the SVG");
        std::fprintf(stderr, "wrote %s\n", ao.svg_path.c_str());
      }
      return 0;
    }
    if (*ev) {
      eo.progress = !eo_quiet;
      if (ev_device == "cuda") eo.executor = executor_for("cuda", 1024, 1024);  // one example (question + answer) per step
      const auto rows = sharq::run_zeroshot(eo);
      std::fputs(eo_json ? sharq::format_eval_json(rows).c_str() : sharq::format_eval_table(rows).c_str(), stdout);
      return 0;
    }
    if (*ppl) {
      po.progress = !po_quiet;
      po.device = ppl_device;
      if (ppl_device == "cuda") {
        if (ppl->count("--schemes") == 0) po.schemes = "bf16,fp8,w4a16,nvfp4,sharq,sharq:merged";
        po.executor = executor_for("cuda", po.ctx, po.ctx);
      }
      return cmd_ppl(po, po_json);
    }
    if (*bg) return cmd_bench_gemm(bo);
    if (*sc) {
      std::fputs(kSchemeHelp, stdout);
      std::fputs(sharq::scheme_options_help(), stdout);
      std::fputs("GPU (--device cuda): fp16, bf16, fp8, w4a16, nvfp4, sharq (p48 | s24, token | tensor, merged, w16)\n",
                 stdout);
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sharq: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
