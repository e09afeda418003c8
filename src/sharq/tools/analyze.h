// `sharq analyze`: why a scheme does well or badly on a model.
//
// Runs the fp32 model over the first window of a text file and captures the input of every
// projection (q/k/v share "q_proj", gate/up share "gate_proj"). For each one it reports the
// outlier statistics (mean over tokens of max|x| / mean|x|, Pearson kurtosis, the channels with the
// largest mean |x|) and, for each scheme, the relative output error of that layer alone,
// ||X W^T - Q(X) Q(W)^T|| / ||X W^T||, on the captured input. A table, and an SVG plot of the errors.
// --tokens beyond the model's max_position_embeddings, or beyond the tokens of the file, is an error
// (as ppl's --ctx). Non-finite
// inputs or outputs are reported as nan, never as a number.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sharq {

struct AnalyzeOptions {
  std::string model_path, tokenizer_path, data_path;
  int64_t tokens = 256;
  std::string schemes = "nvfp4,sharq,sharq:w16,sharq:s24,mxfp4,sharq-mxfp4,hif4,sharq-hif4";
  std::string svg_path;  // empty: no plot
  bool allow_nonfinite = false;  // LoadOptions::allow_nonfinite (the errors stay honest: NaN, never 0)
};

struct AnalyzeRow {
  int64_t layer = 0;
  std::string proj;
  int64_t K = 0;
  double max_mean_ratio = 0, kurtosis = 0;
  std::vector<std::pair<int64_t, double>> top_channels;  // (channel, mean |x|), 5 largest
  std::vector<double> rel_err;                            // per scheme, in AnalyzeResult::schemes order
                                                          // (NaN when an output or the reference is non-finite)
  int64_t nonfinite_inputs = 0;                           // NaN/Inf values in the captured input (stats: NaN)
};

struct AnalyzeResult {
  std::string model, data;
  int64_t tokens = 0;
  std::vector<std::string> schemes;
  std::vector<AnalyzeRow> rows;
};

AnalyzeResult run_analyze(const AnalyzeOptions& opt);
std::string format_analyze_table(const AnalyzeResult& r);
std::string render_analyze_svg(const AnalyzeResult& r);
// "" when every statistic and error is finite; else one sentence naming the first affected layers
// (the CLI prints it as an error and exits 1 after the table).
std::string analyze_nonfinite_summary(const AnalyzeResult& r);

}  // namespace sharq
