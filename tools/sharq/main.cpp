// sharq: thin command-line front end over the sharq library.
//
// Every error reaches the user as one line "sharq: error: <what>" and exit status 1; CLI11 usage
// errors exit with CLI11's status (non-zero) and its message.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "sharq/kernels/cpu/linear.h"
#include "sharq/tools/opcheck.h"

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
    "Options: p48 | s24 | nmN_M (mask), max | l1 | l2 | maxmin (pair score),\n"
    "         tensor | token (activation scale of nvfp4/sharq). Example: sharq:s24:token\n";

int cmd_opcheck(const sharq::OpcheckConfig& cfg, bool csv, bool json) {
  const sharq::OpcheckResult r = sharq::run_opcheck(cfg);
  if (json) std::fputs(sharq::format_opcheck_json(r).c_str(), stdout);
  else if (csv) std::fputs(sharq::format_opcheck_csv(r).c_str(), stdout);
  else std::fputs(sharq::format_opcheck_table(r).c_str(), stdout);
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

  // ---- schemes
  auto* sc = app.add_subcommand("schemes", "List the linear-layer schemes and their options");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*op) return cmd_opcheck(oc, oc_csv, oc_json);
    if (*sc) {
      std::fputs(kSchemeHelp, stdout);
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sharq: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
