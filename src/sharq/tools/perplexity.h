// `sharq ppl`: perplexity of several schemes over one text file, in one run.
//
// Protocol of the common WikiText-2 LLM scripts: tokenize the whole file once (with the
// tokenizer's BOS), cut the ids into non-overlapping windows of ctx tokens (the remainder is
// dropped), run each window from an empty cache, and average the NLL of every predicted token
// (ctx - 1 per window). Windows run outermost and every scheme sees the same window, so the KL
// divergence from the reference scheme and the top-1 agreement are computed without storing logits.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sharq/runtime/cpu/linear.h"
#include "sharq/runtime/step.h"

namespace sharq {

class Tokenizer;

struct PplOptions {
  std::string model_path, tokenizer_path, data_path;
  int64_t ctx = 512;
  int64_t max_windows = 0;  // 0 = every window of the file
  std::string schemes = "fp32,bf16,fp8,w4a16,nvfp4,sharq,sharq:w16,mxfp4,sharq-mxfp4,hif4,sharq-hif4,sharq:s24";
  std::string reference = "fp16";  // SHARQ_SPEC: FP16 is the accuracy reference (run even if not listed)
  bool progress = true;            // progress bar with ETA on stderr
  ExecutorFactory executor;        // null: the CPU reference executor
  std::string device = "cpu";      // for the report
  bool allow_nonfinite = false;    // LoadOptions::allow_nonfinite (the results stay honest: see PplRow)
  // Inputs a caller already holds (the Python module's Model): a non-null one is used instead of
  // loading model_path / tokenizer_path or reading data_path (then only named in the report). They
  // must outlive the call; the tokenizer must have been checked against the weights.
  const ModelWeights* weights = nullptr;
  const Tokenizer* tokenizer = nullptr;
  const std::string* text = nullptr;
};

struct PplRow {
  std::string scheme;
  double nll = 0, ppl = 0;
  double kl = 0;          // mean KL(reference || scheme) per predicted token, nats
  double top1 = 0;        // share of positions whose argmax equals the reference's
  double delta_ppl = 0;   // ppl - ppl_reference
  std::string baseline;   // SharQ variants: their W4A4 baseline
  std::optional<double> gap;     // (ppl_base - ppl) / (ppl_base - ppl_ref); absent when ppl_base <= ppl_ref
  std::optional<double> kl_gap;  // (KL_base - KL) / KL_base: the share of the baseline's divergence removed
  double seconds = 0;
  // Predicted positions whose logits held NaN/Inf. When this row's or the reference's count is
  // not 0, its ppl/KL/top-1/gaps are not meaningful: the report says "non-finite" instead of a
  // number (JSON: null) and ppl_nonfinite_summary() is not empty.
  int64_t nonfinite = 0;
  bool finite() const { return nonfinite == 0; }
};

struct PplResult {
  std::string model, data, reference, device;
  int64_t ctx = 0, windows = 0, windows_in_file = 0, tokens_in_file = 0, predicted = 0;
  double tokenize_seconds = 0;
  std::vector<PplRow> rows;  // the requested schemes, in order (plus reference/baselines if added)
};

PplResult run_perplexity(const PplOptions& opt);
std::string format_ppl_table(const PplResult& r);
std::string format_ppl_json(const PplResult& r);
// "" when every row is finite; else one sentence naming the schemes with non-finite logits (the
// CLI prints it as an error and exits 1 after the report).
std::string ppl_nonfinite_summary(const PplResult& r);

}  // namespace sharq
