// sharq: thin command-line front end over the sharq library.
//
// Every error reaches the user as one line "sharq: error: <what>" and exit status 1: bad option
// values ("--flag: <value> is not <what is expected>", every numeric option goes through
// add_number below), unknown commands, unreadable paths, library errors and running out of memory.
// Other CLI11 usage errors (an unknown option, a missing argument) exit with CLI11's status
// (non-zero) and its message.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "sharq/runtime/cpu/linear.h"
#include "sharq/model/tokenizer.h"
#include "sharq/model/weights.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/tools/analyze.h"
#include "sharq/tools/cuda/bench_gemm.h"  // plain C++: the options struct; the function needs SHARQ_HAVE_CUDA
#include "sharq/tools/cuda/bench_model.h"  // likewise
#include "sharq/tools/generate.h"
#include "sharq/tools/opcheck.h"
#include "sharq/tools/perplexity.h"
#include "sharq/tools/quantize.h"
#include "sharq/tools/template.h"
#include "sharq/tools/zeroshot.h"
#ifdef SHARQ_HAVE_CUDA
#include "sharq/runtime/cuda/engine.h"
#endif
#ifdef SHARQ_HAVE_SERVE
#include "sharq/serve/bench_serve.h"
#include "sharq/serve/server.h"
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

// A bad command line found by sharq itself (not by CLI11): "sharq: error: <what>", exit 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What a bad_alloc message says was being attempted (set by each command before its big work).
std::string g_activity;

// The name an option is reported under: its long name, or its short one when the long name is a
// single letter ("-M,--m" -> "-M", "-n,--steps" -> "--steps").
std::string flag_name(const std::string& names) {
  std::string lng, shrt;
  size_t b = 0;
  while (b <= names.size()) {
    size_t e = names.find(',', b);
    if (e == std::string::npos) e = names.size();
    const std::string n = names.substr(b, e - b);
    if (n.rfind("--", 0) == 0) lng = n;
    else if (n.rfind("-", 0) == 0) shrt = n;
    b = e + 1;
  }
  if (!lng.empty() && (lng.size() > 3 || shrt.empty())) return lng;
  return shrt.empty() ? names : shrt;
}

// The whole string as one number of type T: decimal integers (no sign for unsigned types) or
// floating point (strtod syntax; "nan"/"inf" parse, and are then refused by the range check).
template <class T>
bool parse_number(const std::string& s, T& out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s.front()))) return false;
  if constexpr (std::is_integral_v<T>) {
    const char* b = s.data();
    if (*b == '+' && (s.size() == 1 || s[1] == '-')) return false;
    if (*b == '+') ++b;
    const auto [p, ec] = std::from_chars(b, s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size();
  } else {
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size()) return false;
    if (std::isfinite(v) && std::fabs(v) > static_cast<double>(std::numeric_limits<T>::max())) return false;  // (no UB cast)
    out = static_cast<T>(v);
    return true;
  }
}

template <class T>
std::string describe(T v) {
  if constexpr (std::is_integral_v<T>) return fmt::format("{}", v);
  else return fmt::format("{:g}", v);
}

// What a range means in words, for the error message.
template <class T>
std::string expectation(T lo, T hi, bool lo_open) {
  const char* kind = std::is_integral_v<T> ? "an integer" : "a number";
  const bool no_hi = hi == std::numeric_limits<T>::max();
  const bool no_lo = std::is_integral_v<T> ? lo == std::numeric_limits<T>::min() : lo == std::numeric_limits<T>::lowest();
  if (no_lo && no_hi) return std::is_unsigned_v<T> ? "a non-negative integer" : kind;
  if (no_hi) return fmt::format("{} {} {}", kind, lo_open ? ">" : ">=", describe(lo));
  return fmt::format("{} in {}{}, {}]", kind, lo_open ? "(" : "[", describe(lo), describe(hi));
}

// The one checked numeric option of the CLI: parses the value, checks lo <= v <= hi (lo < v when
// lo_open; NaN and infinities are never in range) and otherwise throws UsageError
// "--flag: <value> is not <expected>". The last occurrence of a repeated option wins.
template <class T>
CLI::Option* add_number(CLI::App* app, const std::string& names, T& target, const std::string& help,
                        T lo = std::numeric_limits<T>::lowest(), T hi = std::numeric_limits<T>::max(),
                        bool lo_open = false) {
  const std::string flag = flag_name(names);
  const std::string expect = expectation(lo, hi, lo_open);
  CLI::Option* o = app->add_option(
      names,
      [&target, flag, expect, lo, hi, lo_open](const CLI::results_t& res) {
        for (const std::string& s : res) {  // each is checked; the last one is kept
          T v{};
          bool ok = parse_number(s, v);
          if constexpr (!std::is_integral_v<T>) ok = ok && std::isfinite(v);
          ok = ok && (lo_open ? v > lo : v >= lo) && v <= hi;
          if (!ok) {
            if constexpr (!std::is_integral_v<T>) {  // a number, but past what the option's type holds
              double d = 0;
              if (parse_number(s, d) && std::isfinite(d) && std::fabs(d) > static_cast<double>(std::numeric_limits<T>::max()))
                throw UsageError(fmt::format("{}: {} is beyond the largest {}-bit float ({:g})", flag, s, 8 * sizeof(T),
                                             std::numeric_limits<T>::max()));
            }
            throw UsageError(fmt::format("{}: {} is not {}", flag, s.empty() ? "''" : s, expect));
          }
          target = v;
        }
        return true;
      },
      help);
  o->type_name(std::is_integral_v<T> ? "INT" : "FLOAT");
  o->default_str(describe(target));
  o->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  return o;
}

// The items of a comma-separated list, spaces around each trimmed: an empty item is an error
// naming the flag (CLI11's own splitting would drop it without a word).
std::vector<std::string> split_list_items(const std::string& raw, const std::string& flag) {
  std::vector<std::string> out;
  size_t b = 0;
  while (true) {
    const size_t e = raw.find(',', b);
    std::string item = raw.substr(b, e == std::string::npos ? std::string::npos : e - b);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (item.empty()) throw UsageError(fmt::format("{}: an empty item in '{}'", flag, raw));
    out.push_back(std::move(item));
    if (e == std::string::npos) return out;
    b = e + 1;
  }
}

// A comma-separated list of strings into a vector: no empty item and no item twice (repeats allowed
// where the position of an item means something: bench model's --prefill times its entries in order).
CLI::Option* add_string_list(CLI::App* app, const std::string& names, std::vector<std::string>& target, const std::string& help,
                             bool repeats = false) {
  const std::string flag = flag_name(names);
  CLI::Option* o = app->add_option(
      names,
      [&target, flag, repeats](const CLI::results_t& res) {
        target.clear();
        for (const std::string& raw : res)
          for (std::string& s : split_list_items(raw, flag)) {
            if (!repeats && std::find(target.begin(), target.end(), s) != target.end())
              throw UsageError(fmt::format("{}: {} is given twice", flag, s));
            target.push_back(std::move(s));
          }
        return true;
      },
      help);
  o->type_name("TEXT,...");
  o->expected(1, 1 << 20);
  o->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  return o;
}

// The same for a comma-separated list of numbers (each element checked).
template <class T>
CLI::Option* add_number_list(CLI::App* app, const std::string& names, std::vector<T>& target, const std::string& help,
                             T lo = std::numeric_limits<T>::lowest(), T hi = std::numeric_limits<T>::max()) {
  const std::string flag = flag_name(names);
  const std::string expect = expectation(lo, hi, false);
  CLI::Option* o = app->add_option(
      names,
      [&target, flag, expect, lo, hi](const CLI::results_t& res) {
        target.clear();
        for (const std::string& raw : res)  // split here, not by CLI11, which drops empty items
          for (const std::string& s : split_list_items(raw, flag)) {
            T v{};
            if (!parse_number(s, v) || v < lo || v > hi) throw UsageError(fmt::format("{}: {} is not {}", flag, s, expect));
            if (std::find(target.begin(), target.end(), v) != target.end())
              throw UsageError(fmt::format("{}: {} is given twice", flag, s));
            target.push_back(v);
          }
        return true;
      },
      help);
  o->type_name(std::is_integral_v<T> ? "INT,..." : "FLOAT,...");
  o->expected(1, 1 << 20);
  o->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  return o;
}

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

// An output path given as an empty string is an error (it would otherwise read as "not given" and
// write nothing without a word).
const CLI::Validator kNonEmptyPath(
    [](std::string& v) { return v.empty() ? std::string("the path is empty") : std::string(); }, "PATH");

// A path the user gave: it must exist, be of the right kind and be readable, or the error says
// which ("<path>: is a directory", "<path>: permission denied", ...). `kind`: what the option
// expects, for the message.
enum class PathKind { kFile, kDir, kFileOrDir };
void check_input_path(const std::string& path, const std::string& flag, PathKind kind) {
  if (path.empty()) throw UsageError(fmt::format("{}: the path is empty", flag));
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    throw UsageError(fmt::format("{}: {}: {}", flag, path, ec.message()));
  if (!std::filesystem::exists(st)) throw UsageError(fmt::format("{}: {}: no such file or directory", flag, path));
  const bool dir = std::filesystem::is_directory(st);
  if (kind == PathKind::kFile && dir) throw UsageError(fmt::format("{}: {}: is a directory", flag, path));
  if (kind == PathKind::kDir && !dir) throw UsageError(fmt::format("{}: {}: is not a directory", flag, path));
  // a FIFO or a device (/dev/zero) would block or never end: only regular files are read
  if (!dir && !std::filesystem::is_regular_file(st))
    throw UsageError(fmt::format("{}: {}: is not a regular file", flag, path));
  if (::access(path.c_str(), dir ? (R_OK | X_OK) : R_OK) != 0) {
    const int err = errno;
    throw UsageError(fmt::format("{}: {}: {}", flag, path, err == EACCES ? "permission denied" : std::generic_category().message(err)));
  }
}

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

#ifdef SHARQ_HAVE_SERVE
// `sharq serve`: the executor for --device (cuda: the engine's KV cache holds --kv-blocks blocks,
// or what the free device memory allows when 0, and the scheduler takes that pool).
int cmd_serve(const sharq::ServeCommandOptions& o) {
  sharq::ExecutorFactory make = sharq::cpu_executor_factory();
  sharq::SyntheticExecutorFactory make_synthetic;
  if (o.device == "cuda") {
#ifdef SHARQ_HAVE_CUDA
    sharq::cuda::EngineOptions eo;
    eo.max_batch_tokens = o.scheduler.max_num_batched_tokens;
    eo.block_size = static_cast<int>(o.scheduler.block_size);
    eo.kv_blocks = o.scheduler.kv_blocks;
    make = sharq::cuda::gpu_executor_factory(eo);
    make_synthetic = [eo](const std::string& name, const sharq::Scheme& s) -> std::unique_ptr<sharq::Executor> {
      return std::make_unique<sharq::cuda::GpuExecutor>(sharq::cuda::SyntheticModel{sharq::synthetic_model_config(name)}, s, eo);
    };
#else
    throw std::runtime_error("--device cuda: this sharq was built without CUDA (reconfigure with nvcc on the PATH or "
                             "-DSHARQ_CUDA=ON)");
#endif
  }
  if (!o.chat_template.empty()) check_input_path(o.chat_template, "--chat-template", PathKind::kFileOrDir);
  g_activity = o.synthetic.empty() ? fmt::format("serve {}", o.model) : fmt::format("serve --synthetic {}", o.synthetic);
  return sharq::run_serve(o, make, make_synthetic);
}
#endif

// The --synthetic architectures (model/config.h synthetic_model_config).
const std::vector<std::string> kSyntheticDenseModels = {"llama3.1-8b", "qwen2.5-7b", "qwen3-8b"};
// + the MoE architectures, which the GPU engine runs (bench model, serve); quantize generates dense ones only
const std::vector<std::string> kSyntheticModels = {"llama3.1-8b", "qwen2.5-7b", "qwen3-8b", "qwen3-30b-a3b", "mixtral-8x7b"};

struct GenerateArgs {
  std::string model, tokenizer, scheme = "fp32", device = "cpu";
  sharq::GenerateOptions opt;
  bool stats = false, allow_nonfinite = false;
};

int cmd_generate(const GenerateArgs& a) {
  const sharq::Scheme scheme = sharq::parse_scheme(a.scheme);
  const sharq::ModelWeights weights = sharq::load_model_weights(a.model, sharq::LoadOptions{a.allow_nonfinite});
  const auto tok = sharq::load_tokenizer_for(a.model, a.tokenizer, weights.config);
  const int64_t max_pos = weights.config.max_position_embeddings;
  // llama2.c semantics: -n beyond the model's context is clamped to it; say so
  if (max_pos > 0 && a.opt.steps > max_pos)
    std::fprintf(stderr, "sharq: note: -n %lld is beyond the model's max_position_embeddings %lld; generating at most %lld "
                 "positions\n", static_cast<long long>(a.opt.steps), static_cast<long long>(max_pos),
                 static_cast<long long>(max_pos));
  const int64_t ctx = max_pos > 0 ? max_pos : a.opt.steps;
  const int64_t len = std::min<int64_t>(std::max<int64_t>(a.opt.steps, 1), ctx);
  g_activity = fmt::format("generate: a sequence of {} positions (-n {})", len, a.opt.steps);
  const std::unique_ptr<sharq::Executor> model = executor_for(a.device, len, len)(weights, scheme);
  const auto r = sharq::generate(*model, *tok, a.opt, [](const std::string& piece) {
    std::fputs(piece.c_str(), stdout);
    std::fflush(stdout);
  });
  std::fputc('\n', stdout);
  if (r.nonfinite_at >= 0 && a.allow_nonfinite)
    std::fprintf(stderr, "sharq: warning: generation stopped: the logits at position %lld are not finite (NaN/Inf; the "
                 "model was loaded with --allow-nonfinite)\n", static_cast<long long>(r.nonfinite_at));
  if (r.nonfinite_at >= 0 && !a.allow_nonfinite) {  // finite weights: the arithmetic overflowed
    std::fprintf(stderr, "sharq: error: generation stopped: the logits at position %lld are not finite (NaN/Inf) although "
                 "every weight is finite (the activations overflowed under scheme %s)\n", static_cast<long long>(r.nonfinite_at),
                 a.scheme.c_str());
    return 1;
  }
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
    "  read                     a plain streaming read of the SharQ W32 weight payload: the floor of any kernel\n"
    "                           that reads it once under this timer (rd/exg = read / exact_gemm time)\n"
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

int cmd_bench_model(const sharq::BenchModelOptions& o) {
#ifdef SHARQ_HAVE_CUDA
  return sharq::run_bench_model(o);
#else
  (void)o;
  throw std::runtime_error("bench model: this sharq was built without CUDA (reconfigure with nvcc on the PATH "
                           "or -DSHARQ_CUDA=ON)");
#endif
}

int cmd_ppl(const sharq::PplOptions& o, bool json) {
  const sharq::PplResult r = sharq::run_perplexity(o);
  std::fputs(json ? sharq::format_ppl_json(r).c_str() : sharq::format_ppl_table(r).c_str(), stdout);
  // the table marks non-finite rows; the run as a whole failed
  if (const std::string bad = sharq::ppl_nonfinite_summary(r); !bad.empty()) throw std::runtime_error("ppl: " + bad);
  return 0;
}

// The first word that is not an option, from argv[from]: the (sub)command the user asked for.
// The top level and `bench` take no option with a value, so this is exact.
const char* first_word(int argc, char** argv, int from) {
  for (int i = from; i < argc; ++i)
    if (argv[i][0] != '-') return argv[i];
    else if (std::string(argv[i]) == "--") return i + 1 < argc ? argv[i + 1] : nullptr;
  return nullptr;
}

std::string command_names(const CLI::App& app) {
  std::string s;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    s += (s.empty() ? "" : ", ") + sub->get_name();
  return s;
}

// An unknown (sub)command is named (none at all is left to CLI11: --help and --version need none).
void check_command(const CLI::App& app, const char* word, const std::string& prefix) {
  if (!word) return;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    if (sub->check_name(word)) return;
  throw UsageError(fmt::format("unknown {}command '{}' (commands: {})", prefix, word, command_names(app)));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sharq: SharQ W4A4 quantization (sparse FP4 backbone + dense FP4 residual) for LLM inference"};
  app.set_version_flag("--version", "sharq 0.1.0");
  app.require_subcommand(1);
  // a repeated option: the last one wins (inherited by every subcommand added below)
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  const std::string kNonfiniteHelp =
      "load a checkpoint whose weights hold NaN/Inf (refused by default); results from non-finite logits are "
      "still reported as non-finite and the command exits 1";

  // ---- opcheck
  sharq::OpcheckConfig oc;
  bool oc_csv = false, oc_json = false;
  auto* op = app.add_subcommand("opcheck", "Operator-level error study of every scheme on one linear layer");
  CLI::Option* op_m = add_number<int64_t>(op, "-M,--m", oc.M, "tokens (rows of X; not with --x)", 1);
  CLI::Option* op_k = add_number<int64_t>(op, "-K,--k", oc.K, "in-features (not with --x / --w)", 1);
  CLI::Option* op_n = add_number<int64_t>(op, "-N,--n", oc.N, "out-features (not with --w)", 1);
  add_number<uint64_t>(op, "--seed", oc.seed, "seed of the synthetic X and W");
  op->add_option("--schemes", oc.schemes, "comma-separated schemes (see `sharq schemes`)")->capture_default_str();
  op->add_option("--reference", oc.reference, "accuracy reference for 'gap recovered'")->capture_default_str();
  CLI::Option* op_x = op->add_option("--x", oc.x_path, "activations X (M x K) as .npy: float32, float16 or bfloat16");
  CLI::Option* op_w = op->add_option("--w", oc.w_path, "weights W (N x K, nn.Linear layout) as .npy");
  // the shape comes from the arrays: a size given too would be ignored without a word
  op_m->excludes(op_x);
  op_k->excludes(op_x);
  op_k->excludes(op_w);
  op_n->excludes(op_w);
  op->add_option("--save", oc.save_dir, "write X, W and each scheme's Y and dequantized operands as float32 .npy here")
      ->check(kNonEmptyPath);
  op->add_flag("--csv", oc_csv, "CSV output")->excludes(op->add_flag("--json", oc_json, "JSON output"));
  op->footer(kSchemeHelp);

  // ---- generate
  GenerateArgs ga;
  auto* gen = app.add_subcommand("generate", "Generate text from a checkpoint (greedy or sampled)");
  gen->add_option("model", ga.model, "Hugging Face model directory or llama2.c .bin checkpoint")->required();
  gen->add_option("--tokenizer", ga.tokenizer, "tokenizer file (tokenizer.json, tokenizer.model or llama2.c tok*.bin)");
  gen->add_option("-p,--prompt", ga.opt.prompt, "prompt text (empty: start from BOS)");
  add_number<int64_t>(gen, "-n,--steps", ga.opt.steps,
                      "positions to run, prompt included (llama2.c semantics; clamped, with a note, to the model's "
                      "max_position_embeddings)", 1);
  add_number<float>(gen, "-t,--temperature", ga.opt.temperature, "0 = greedy", 0.0f);
  add_number<float>(gen, "--top-p", ga.opt.top_p, "nucleus sampling mass, in (0, 1] (1 = plain sampling)", 0.0f, 1.0f,
                    /*lo_open=*/true);
  add_number<uint64_t>(gen, "--seed", ga.opt.seed, "sampling seed");
  gen->add_option("--scheme", ga.scheme, "linear-layer scheme (see `sharq schemes`)")->capture_default_str();
  gen->add_option("--device", ga.device, "cpu (the FP32 reference) | cuda (the GPU engine: Hopper)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  gen->add_flag("--stats", ga.stats, "print timing to stderr");
  gen->add_flag("--allow-nonfinite", ga.allow_nonfinite, kNonfiniteHelp);

  // ---- serve
#ifdef SHARQ_HAVE_SERVE
  sharq::ServeCommandOptions so;
  int64_t so_delay_ms = 0;
  auto* sv = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching (docs/serve.md)");
  sv->add_option("model", so.model, "Hugging Face model directory or llama2.c .bin checkpoint (omitted with --synthetic)");
  sv->add_option("--synthetic", so.synthetic, "instead of MODEL: random weights of a real architecture, generated on the "
                                              "GPU (--device cuda); text is token ids unless --tokenizer is given")
      ->check(CLI::IsMember(kSyntheticModels));
  sv->add_option("--tokenizer", so.tokenizer, "tokenizer file (default: found beside the model)");
  sv->add_option("--scheme", so.scheme, "linear-layer scheme (see `sharq schemes`)")->capture_default_str();
  sv->add_option("--device", so.device, "cpu (the FP32 reference) | cuda (the GPU engine: Hopper)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  sv->add_option("--host", so.server.host, "address to listen on")->capture_default_str();
  add_number<int>(sv, "--port", so.server.port, "port to listen on (0: an ephemeral port, printed at start)", 0, 65535);
  sv->add_option("--served-model-name", so.served_model_name, "the model name of the API (default: MODEL as given)");
  sv->add_option("--chat-template", so.chat_template,
                 "chat template for /v1/chat/completions: a .jinja file, or a directory / tokenizer_config.json "
                 "(default: the model's own, when it has one)");
  add_number<int64_t>(sv, "--max-model-len", so.scheduler.max_model_len,
                      "positions per request, prompt + max_tokens (0: the model's max_position_embeddings)", 0);
  add_number<int64_t>(sv, "--max-num-seqs", so.scheduler.max_num_seqs, "requests running at once", 1);
  add_number<int64_t>(sv, "--max-num-batched-tokens", so.scheduler.max_num_batched_tokens,
                      "new tokens per step (decodes + prefill chunks)", 1);
  add_number<int64_t>(sv, "--max-queue", so.scheduler.max_queue, "requests waiting at most; beyond it: HTTP 429", 1);
  add_number<int64_t>(sv, "--kv-blocks", so.scheduler.kv_blocks,
                      "KV-cache blocks of 16 positions (0: max-num-seqs full-length sequences); fewer preempt", 0);
  add_number<int64_t>(sv, "--max-connections", so.server.max_connections,
                      "connection threads at most (0: max-num-seqs + max-queue + 64)", 0);
  sv->add_option("--api-key", so.server.api_key, "require 'Authorization: Bearer KEY' on /v1/*");
  sv->add_flag("--allow-nonfinite", so.allow_nonfinite, kNonfiniteHelp);
  add_number<int64_t>(sv, "--debug-step-delay-ms", so_delay_ms, "testing: sleep before every engine step", 0, 10000)
      ->group("");
#endif

  // ---- ppl
  sharq::PplOptions po;
  bool po_json = false, po_quiet = false;
  auto* ppl = app.add_subcommand("ppl", "Perplexity, KL and top-1 agreement of several schemes over a text file");
  ppl->add_option("model", po.model_path, "Hugging Face model directory or llama2.c .bin checkpoint")->required();
  ppl->add_option("--tokenizer", po.tokenizer_path, "tokenizer file (default: found beside the model)");
  ppl->add_option("--data", po.data_path, "text file (e.g. wiki.test.txt)")->required();
  add_number<int64_t>(ppl, "--ctx", po.ctx, "window length in tokens (at most the model's max_position_embeddings)", 2);
  add_number<int64_t>(ppl, "--max-windows", po.max_windows, "only the first N windows (0 = all)", 0);
  ppl->add_option("--schemes", po.schemes, "comma-separated schemes")->capture_default_str();
  ppl->add_option("--reference", po.reference, "reference scheme for delta, KL, top-1 and gap")->capture_default_str();
  std::string ppl_device = "cpu";
  ppl->add_option("--device", ppl_device, "cpu | cuda (default schemes on cuda: bf16,fp8,w4a16,nvfp4,sharq,sharq:merged)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  ppl->add_flag("--json", po_json, "JSON output");
  ppl->add_flag("-q,--quiet", po_quiet, "no progress bar");
  ppl->add_flag("--allow-nonfinite", po.allow_nonfinite, kNonfiniteHelp);
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
  add_number<int64_t>(ev, "--limit", eo.limit, "first N examples per task (0 = all)", 0);
  std::string ev_device = "cpu";
  ev->add_option("--device", ev_device, "cpu | cuda")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  ev->add_flag("--json", eo_json, "JSON output");
  ev->add_flag("-q,--quiet", eo_quiet, "no progress on stderr");
  ev->add_flag("--allow-nonfinite", eo.allow_nonfinite, kNonfiniteHelp);

  // ---- analyze
  sharq::AnalyzeOptions ao;
  auto* an = app.add_subcommand("analyze", "Per-layer outlier statistics and per-layer error of each scheme");
  an->add_option("model", ao.model_path, "Hugging Face model directory or llama2.c .bin checkpoint")->required();
  an->add_option("--tokenizer", ao.tokenizer_path, "tokenizer file (default: found beside the model)");
  an->add_option("--data", ao.data_path, "text file")->required();
  add_number<int64_t>(an, "--tokens", ao.tokens, "tokens of the file to run (at most the model's max_position_embeddings)", 1);
  an->add_option("--schemes", ao.schemes, "comma-separated schemes")->capture_default_str();
  an->add_option("--svg", ao.svg_path, "also write an SVG plot of the per-layer errors here")->check(kNonEmptyPath);
  an->add_flag("--mxfp4-fp8", ao.mxfp4_fp8,
               "also measure MXFP4 on FP8 tensor cores: per operand plane the 128-K tiles E4M3 cannot hold exactly, "
               "and the output error of rounding them (quant/fp8_fold.h)");
  an->add_flag("--allow-nonfinite", ao.allow_nonfinite, kNonfiniteHelp);

  // ---- bench gemm
  sharq::BenchGemmOptions bo;
  auto* bench = app.add_subcommand("bench", "GPU benchmarks (needs a CUDA build and an NVIDIA Hopper GPU)");
  bench->require_subcommand(1);
  auto* bg = bench->add_subcommand(
      "gemm", "Time the GPU linear layers (SharQ, NVFP4, W4A16) against cuBLASLt FP16/BF16/FP8 on LLM shapes");
  bg->add_option("--model", bo.model, "llama3.1-8b | qwen2.5-7b | all, comma-separated (default all; --quick: llama3.1-8b)");
  bg->add_option("--layer", bo.layers, "comma-separated: qkv, o, gate_up, down | all")->capture_default_str();
  add_number_list<int64_t>(bg, "-M,--m", bo.m,
                           "comma-separated token counts (default 1,8,16,64,256,1024,4096; --quick: 1,16,256,4096)", 1);
  add_number<int>(bg, "--reps", bo.reps, "timed repetitions per method, median reported (at least 50)", 1);
  add_number<int>(bg, "--warmup", bo.warmup, "warm-up calls per method (at least one per buffer set)", 0);
  add_number<int>(bg, "--max-sets", bo.max_sets, "cap on the rotating (W, X, Y) buffer sets per method", 1, 64);
  bg->add_option("--kernel", bo.kernel, "FP4 GEMM family: auto | small (M <= 64) | prefill")
      ->capture_default_str()->check(CLI::IsMember({"auto", "small", "prefill"}));
  add_number<int>(bg, "--splits", bo.splits, "FP4 GEMMs: force the split-K count (small: up to Kp / 128; prefill: "
                  "the cluster size, at most 8); 0 = the planner's", 0);
  bg->add_option("--act-scale", bo.act_scale, "SharQ/NVFP4 activation scale g_x: token | tensor")
      ->capture_default_str()->check(CLI::IsMember({"token", "tensor"}));
  bg->add_option("--mask", bo.mask, "SharQ mask: p48 | s24")->capture_default_str()->check(CLI::IsMember({"p48", "s24"}));
  add_number<uint64_t>(bg, "--seed", bo.seed, "seed of the random X and W");
  add_number<int>(bg, "--device", bo.device, "CUDA device ordinal", 0);
  bg->add_flag("--csv", bo.csv, "CSV on stdout, one row per (model, layer, M), with a header");
  bg->add_flag("--quick", bo.quick, "fewer shapes: llama3.1-8b, M = 1,16,256,4096 (explicit --model/--m win)");
  bg->add_flag("-q,--quiet", bo.quiet, "no progress on stderr");
  bg->footer(kBenchGemmHelp);

  // ---- bench model
  sharq::BenchModelOptions bmo;
  auto* bm = bench->add_subcommand("model", "Whole-model prefill latency and decode tok/s of the GPU engine, per scheme, "
                                            "with a per-component breakdown");
  bm->add_option("model", bmo.model, "checkpoint (HF directory or llama2.c .bin); or use --synthetic");
  bm->add_option("--synthetic", bmo.synthetic, "random weights of a real architecture, generated on the GPU")
      ->check(CLI::IsMember(kSyntheticModels));
  bm->add_option("--schemes", bmo.schemes, "comma-separated GPU schemes")->capture_default_str();
  add_string_list(bm, "--prefill", bmo.prefill,
                  "prefill shapes BxN, timed in this order (comma-separated; default 1x512,1x2048,8x2048; a shape may "
                  "repeat: a 1x2048 given twice reports the second, at the clock the first leaves)", /*repeats=*/true);
  add_number_list<int64_t>(bm, "--batches", bmo.batches, "decode batch sizes (comma-separated; default 1,8,32,64)", 1);
  add_number<int64_t>(bm, "--context", bmo.context, "tokens of context before the timed decode steps", 1);
  add_number<int>(bm, "--steps", bmo.steps, "timed decode steps per batch size", 1);
  add_number<uint64_t>(bm, "--seed", bmo.seed, "seed of the synthetic weights");
  bm->add_option("--fusion", bmo.fusion, "FP4 schemes: which element-wise steps run inside the activation preps "
                                         "(all | norm | swiglu | none: separate kernels)")
      ->capture_default_str()->check(CLI::IsMember({"all", "norm", "swiglu", "none"}));
  bm->add_option("--reduce-fusion", bmo.reduce_fusion, "FP4 schemes: which element-wise steps run inside the split-K "
                                                      "reduction of the decode GEMMs (all | norm | swiglu | none)")
      ->capture_default_str()->check(CLI::IsMember({"all", "norm", "swiglu", "none"}));
  bm->add_option("--gemm-residual", bmo.gemm_residual, "fp16, bf16: add o's and down's product to the residual "
                                                      "stream inside the cuBLASLt GEMM (on | off: the norm kernel adds it)")
      ->capture_default_str()->check(CLI::IsMember({"on", "off"}));
  add_number<int64_t>(bm, "--gemv16-max-m", bmo.gemv16_max_m,
                      "fp16, bf16: steps of at most this many rows through the 16-bit GEMV, with the norms and "
                      "SwiGLU inside it (0: cuBLASLt and separate kernels)", 0, 4, false);
  bm->add_option("--prune-last-layer", bmo.prune_last_layer, "prefill steps: the last layer's o projection, MLP and "
                                                           "final norm for the logits rows only (on | off)")
      ->capture_default_str()->check(CLI::IsMember({"on", "off"}));
  add_number<double>(bm, "--torch-tok-s", bmo.torch_tok_s,
                     "the same run's torch decode tok/s (scripts/device/torch_decode_peer.py), for the ratio", 0.0,
                     1e9, true);
  bm->add_option("--csv", bmo.csv, "also write one CSV row per scheme here")->check(kNonEmptyPath);
  bm->add_option("--svg", bmo.svg, "also write the breakdown as an SVG stacked-bar plot here")->check(kNonEmptyPath);
  bm->add_flag("-q,--quiet", bmo.quiet, "no progress on stderr");
#ifdef SHARQ_HAVE_SERVE
  sharq::BenchServeOptions bso;
  auto* bsv = bench->add_subcommand("serve", "Load generator for an OpenAI-compatible server on this machine: throughput, "
                                             "TTFT, TPOT, ITL, E2E (docs/serve.md)");
  bsv->add_option("--url", bso.url, "the server (loopback only)")->capture_default_str();
  bsv->add_option("--model", bso.model, "model name (default: the server's)");
  add_number<int64_t>(bsv, "--num-prompts", bso.num_prompts, "requests", 1, 1000000);
  add_number<int64_t>(bsv, "--input-len", bso.input_len, "prompt tokens (random ids, exact length)", 1);
  add_number<int64_t>(bsv, "--output-len", bso.output_len, "generated tokens per request (ignore_eos)", 1);
  add_number<double>(bsv, "--range-ratio", bso.range_ratio, "lengths uniform in len * [1 - r, 1 + r]", 0.0, 0.999);
  add_number<int64_t>(bsv, "--token-range", bso.token_range, "prompt token ids drawn from [0, N) (<= the vocabulary)", 1);
  add_number<double>(bsv, "--request-rate", bso.request_rate, "Poisson arrivals per second (0: all at once)", 0.0);
  add_number<int64_t>(bsv, "--max-concurrency", bso.max_concurrency, "requests in flight at most (0: all)", 0);
  add_number<uint64_t>(bsv, "--seed", bso.seed, "seed of the lengths, prompts and arrivals");
  add_number<double>(bsv, "--timeout", bso.timeout_s, "seconds for the whole run (each request too)", 0.0, 1e6, true);
  bsv->add_option("--label", bso.label, "a name for this run (table and CSV)");
  bsv->add_option("--csv", bso.csv, "append one CSV row here")->check(kNonEmptyPath);
#endif

  // ---- quantize
  sharq::QuantizeOptions qo;
  bool qo_quiet = false;
  std::string qo_fused = "shared";
  auto* qz = app.add_subcommand("quantize", "Write a quantized Hugging Face checkpoint (compressed-tensors or ModelOpt) that "
                                            "sharq, vLLM, SGLang and TensorRT-LLM load");
  qz->add_option("model", qo.model_path, "Hugging Face model directory or llama2.c .bin checkpoint (omitted with --synthetic)");
  qz->add_option("out", qo.out_dir, "output directory (created; must not exist or be empty)");
  qz->add_option("--scheme", qo.scheme, "nvfp4 | w4a16 | sharq | sharq:w16 | fp8 (activation options are recorded)")->capture_default_str();
  qz->add_option("--format", qo.format, "compressed-tensors | modelopt")
      ->capture_default_str()->check(CLI::IsMember({"compressed-tensors", "modelopt"}));
  qz->add_option("--tokenizer", qo.tokenizer_path, "tokenizer to copy (default: the model's own files)");
  qz->add_option("--global-scales", qo_fused,
                 "NVFP4 global scale: shared over q/k/v and over gate/up, as vLLM and TensorRT-LLM require (default), or "
                 "per-projection, as `sharq ppl MODEL` quantizes at load")
      ->capture_default_str()->check(CLI::IsMember({"shared", "per-projection"}));
  qz->add_option("--calib-data", qo.calib_data,
                 "text file: store calibrated static activation scales (the formats' W4A4 form: compressed-tensors "
                 "input_global_scale, ModelOpt input_scale), the amax of each projection's input over its first --calib-tokens "
                 "tokens (nvfp4, sharq, sharq:w16; without it the weights-only W4A16 form is written)");
  add_number<int64_t>(qz, "--calib-tokens", qo.calib_tokens, "tokens of --calib-data to run, in windows of the model's context", 1);
  qz->add_option("--synthetic", qo.synthetic, "instead of MODEL: random weights of a real architecture, generated one projection at a "
                                              "time (for memory and speed measurements)")
      ->check(CLI::IsMember(kSyntheticDenseModels));
  add_number<uint64_t>(qz, "--seed", qo.seed, "seed of the --synthetic weights");
  qz->add_flag("-q,--quiet", qo_quiet, "no progress on stderr");

  // ---- template
  sharq::TemplateOptions to;
  bool to_no_gen = false;
  auto* tp = app.add_subcommand("template", "Render a model's chat template for a conversation (the exact prompt the server "
                                            "would build; docs/chat.md)");
  tp->add_option("model", to.path, "model or tokenizer directory (tokenizer_config.json / chat_template.jinja), or one of "
                                   "those files")->required();
  tp->add_option("--messages", to.messages_path, "JSON file: an array of messages, or an object with \"messages\" "
                                                 "(and \"tools\")")->required();
  tp->add_option("--tools", to.tools_path, "JSON file: an array of tool schemas");
  tp->add_flag("--no-generation-prompt", to_no_gen, "do not end with the assistant's turn header (add_generation_prompt=false)");
  tp->add_option("--enable-thinking", to.enable_thinking, "the template variable enable_thinking (Qwen3)")
      ->check(CLI::IsMember({"true", "false"}));
  tp->add_option("--tokenizer", to.tokenizer_path, "tokenizer file for --ids (default: the one in the directory)");
  tp->add_flag("--ids", to.ids, "print {\"text\": ..., \"ids\": [...]} (one JSON line) instead of the bare prompt");

  // ---- schemes
  auto* sc = app.add_subcommand("schemes", "List the linear-layer schemes and their options");

  std::string command = "sharq";
  try {
    // an unknown command is named (CLI11 would only say that a subcommand is required)
    const char* word = first_word(argc, argv, 1);
    check_command(app, word, "");
    if (word && std::string(word) == "bench") {
      int i = 1;
      while (i < argc && std::string(argv[i]) != "bench") ++i;
      check_command(*bench, first_word(argc, argv, i + 1), "bench ");
    }
    if (word) command = word;
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      return app.exit(e);
    }
    if (*op) {
      if (!oc.x_path.empty()) check_input_path(oc.x_path, "--x", PathKind::kFile);
      if (!oc.w_path.empty()) check_input_path(oc.w_path, "--w", PathKind::kFile);
      if (std::error_code ec; !oc.save_dir.empty() && std::filesystem::exists(oc.save_dir, ec) &&
                              !std::filesystem::is_directory(oc.save_dir, ec))
        throw UsageError(fmt::format("--save: {}: is not a directory", oc.save_dir));
      g_activity = fmt::format("opcheck -M {} -K {} -N {}", oc.M, oc.K, oc.N);
      return cmd_opcheck(oc, oc_csv, oc_json);
    }
    if (*gen) {
      check_input_path(ga.model, "model", PathKind::kFileOrDir);
      if (gen->count("--tokenizer")) check_input_path(ga.tokenizer, "--tokenizer", PathKind::kFile);  // "" too
      return cmd_generate(ga);
    }
#ifdef SHARQ_HAVE_SERVE
    if (*sv) {
      if (so.synthetic.empty() == so.model.empty())
        throw UsageError(so.model.empty() ? "serve: MODEL is required (or --synthetic NAME)"
                                          : fmt::format("serve: --synthetic replaces MODEL; got both ('{}')", so.model));
      if (!so.synthetic.empty() && so.device != "cuda")
        throw UsageError("serve: --synthetic needs --device cuda (the random weights are generated on the GPU)");
      if (!so.model.empty()) check_input_path(so.model, "model", PathKind::kFileOrDir);
      if (sv->count("--tokenizer")) check_input_path(so.tokenizer, "--tokenizer", PathKind::kFile);
      if (so.server.host.empty()) throw UsageError("--host: the address is empty");
      if (sv->count("--api-key") && so.server.api_key.empty())  // e.g. an unset $KEY: never serve open by accident
        throw UsageError("--api-key: the key is empty (the server would run without authentication)");
      so.scheduler.step_delay = std::chrono::milliseconds(so_delay_ms);
      return cmd_serve(so);
    }
#endif
    if (*an) {
      check_input_path(ao.model_path, "model", PathKind::kFileOrDir);
      if (an->count("--tokenizer")) check_input_path(ao.tokenizer_path, "--tokenizer", PathKind::kFile);
      check_input_path(ao.data_path, "--data", PathKind::kFile);
      if (std::error_code ec; !ao.svg_path.empty() && std::filesystem::is_directory(ao.svg_path, ec))
        throw UsageError(fmt::format("--svg: {}: is a directory", ao.svg_path));
      g_activity = fmt::format("analyze --tokens {}", ao.tokens);
      const auto r = sharq::run_analyze(ao);
      std::fputs(sharq::format_analyze_table(r).c_str(), stdout);
      if (!ao.svg_path.empty()) {
        errno = 0;
        std::ofstream svg(ao.svg_path);
        if (!(svg << sharq::render_analyze_svg(r)))
          throw std::runtime_error(fmt::format("--svg: {}: cannot write the SVG: {}", ao.svg_path,
                                               errno ? std::generic_category().message(errno) : "write failed"));
        std::fprintf(stderr, "wrote %s\n", ao.svg_path.c_str());
      }
      if (const std::string bad = sharq::analyze_nonfinite_summary(r); !bad.empty())
        throw std::runtime_error("analyze: " + bad);
      return 0;
    }
    if (*ev) {
      check_input_path(eo.model_path, "model", PathKind::kFileOrDir);
      if (ev->count("--tokenizer")) check_input_path(eo.tokenizer_path, "--tokenizer", PathKind::kFile);
      check_input_path(eo.data_dir, "--data-dir", PathKind::kDir);
      eo.progress = !eo_quiet;
      if (ev_device == "cuda") eo.executor = executor_for("cuda", 1024, 1024);  // one example (question + answer) per step
      g_activity = fmt::format("eval --tasks {}", eo.tasks);
      const auto rows = sharq::run_zeroshot(eo);
      for (const auto& row : rows)
        if (row.truncated && row.scheme == rows.front().scheme)
          std::fprintf(stderr, "sharq: note: %s: %lld of %lld examples are longer than the model's context and were cut "
                       "from the left to fit (as lm-evaluation-harness does)\n", row.task.c_str(),
                       static_cast<long long>(row.truncated), static_cast<long long>(row.n));
      std::fputs(eo_json ? sharq::format_eval_json(rows).c_str() : sharq::format_eval_table(rows).c_str(), stdout);
      if (const std::string bad = sharq::eval_nonfinite_summary(rows); !bad.empty()) throw std::runtime_error("eval: " + bad);
      return 0;
    }
    if (*ppl) {
      check_input_path(po.model_path, "model", PathKind::kFileOrDir);
      if (ppl->count("--tokenizer")) check_input_path(po.tokenizer_path, "--tokenizer", PathKind::kFile);
      check_input_path(po.data_path, "--data", PathKind::kFile);
      po.progress = !po_quiet;
      po.device = ppl_device;
      if (ppl_device == "cuda") {
        if (ppl->count("--schemes") == 0) po.schemes = "bf16,fp8,w4a16,nvfp4,sharq,sharq:merged";
        po.executor = executor_for("cuda", po.ctx, po.ctx);
      }
      g_activity = fmt::format("ppl --ctx {}", po.ctx);
      return cmd_ppl(po, po_json);
    }
    if (*qz) {
      if (!qo.synthetic.empty() && qo.out_dir.empty()) std::swap(qo.model_path, qo.out_dir);  // `quantize --synthetic NAME OUT`
      if (!qo.synthetic.empty() && !qo.model_path.empty())
        throw UsageError(fmt::format("quantize: --synthetic replaces MODEL; give only OUT (got '{}' and '{}')", qo.model_path, qo.out_dir));
      if (qo.out_dir.empty())
        throw UsageError(qo.synthetic.empty() ? "quantize: MODEL and OUT are required" : "quantize: OUT is required");
      if (qo.synthetic.empty()) check_input_path(qo.model_path, "model", PathKind::kFileOrDir);
      if (qz->count("--calib-data")) check_input_path(qo.calib_data, "--calib-data", PathKind::kFile);
      if (qz->count("--calib-tokens") && qo.calib_data.empty())
        throw UsageError("quantize: --calib-tokens needs --calib-data (the text to calibrate on)");
      if (qz->count("--seed") && qo.synthetic.empty())
        throw UsageError("quantize: --seed seeds the --synthetic weights only (a real model's quantization has no randomness)");
      qo.calib_tokens_exact = qz->count("--calib-tokens") > 0;
      if (qz->count("--tokenizer")) check_input_path(qo.tokenizer_path, "--tokenizer", PathKind::kFile);
      qo.progress = !qo_quiet;
      qo.fused_global_scales = qo_fused == "shared";
      g_activity = fmt::format("quantize --scheme {}", qo.scheme);
      const sharq::QuantizeReport r = sharq::quantize_checkpoint(qo);
      std::fputs(sharq::format_quantize_report(r).c_str(), stdout);
      return 0;
    }
    if (*tp) {
      check_input_path(to.path, "model", PathKind::kFileOrDir);
      check_input_path(to.messages_path, "--messages", PathKind::kFile);
      if (!to.tools_path.empty()) check_input_path(to.tools_path, "--tools", PathKind::kFile);
      if (tp->count("--tokenizer")) check_input_path(to.tokenizer_path, "--tokenizer", PathKind::kFile);
      to.add_generation_prompt = !to_no_gen;
      const std::string out = sharq::run_template(to);
      std::fwrite(out.data(), 1, out.size(), stdout);
      return 0;
    }
    if (*bg) return cmd_bench_gemm(bo);
    if (*bm) return cmd_bench_model(bmo);
#ifdef SHARQ_HAVE_SERVE
    if (*bsv) {
      g_activity = fmt::format("bench serve {}", bso.url);
      return sharq::run_bench_serve(bso);
    }
#endif
    if (*sc) {
      std::fputs(kSchemeHelp, stdout);
      std::fputs(sharq::scheme_options_help(), stdout);
      std::fputs("GPU (--device cuda): fp16, bf16, fp8, w4a16, nvfp4, sharq (p48 | s24, token | tensor, merged, w16)\n",
                 stdout);
      return 0;
    }
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "sharq: error: %s: out of memory%s%s\n", command.c_str(), g_activity.empty() ? "" : " in ",
                 g_activity.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sharq: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
