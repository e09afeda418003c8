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
//
// With mxfp4_fp8, a second table measures the FP8 route for MXFP4 (quant/fp8_fold.h): each operand
// plane (the MXFP4 weights that read the input: q, k and v stacked for q_proj's input, gate and up for
// gate_proj's; plain MXFP4's activations; SharQ-MXFP4's backbone S^ and residual R^)
// cut into 128-K tiles of one row, each tile E4M3 values times one power-of-two scale. Per plane:
// the share of tiles with an element E4M3 cannot hold exactly (a block more than 2^14 below the
// tile's largest) and the share of nonzero elements affected; per scheme, the layer's relative
// output error of the folded operands (the inexact elements rounded to E4M3, the flush) against
// the exact MXFP4 product, beside that product's own error against FP32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sharq {

struct AnalyzeOptions {
  bool mxfp4_fp8 = false;  // also the FP8-fold table (above)
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

// Tile statistics of one operand plane folded for FP8 (quant/fp8_fold.h).
struct FoldPlaneStats {
  int64_t tiles = 0, tiles_inexact = 0;  // 128-K tiles of one row (a row's tail tile counts as one)
  int64_t nonzero = 0, inexact = 0;      // nonzero elements; those E4M3 does not hold exactly
};

struct AnalyzeFoldRow {  // parallel to AnalyzeResult::rows
  FoldPlaneStats weight, mxfp4_x, sharq_s, sharq_r;
  double mxfp4_fold_err = 0, mxfp4_err = 0;  // ||Y_fold - Y|| / ||Y||, ||Y - Y_fp32|| / ||Y_fp32||
  double sharq_fold_err = 0, sharq_err = 0;  // the same for SharQ-MXFP4 (Y = S^ W^T + R^ W^T)
};

struct AnalyzeResult {
  std::vector<AnalyzeFoldRow> fold;  // empty unless AnalyzeOptions::mxfp4_fp8
  std::string model, data;
  int64_t tokens = 0;
  std::vector<std::string> schemes;
  std::vector<AnalyzeRow> rows;
};

AnalyzeResult run_analyze(const AnalyzeOptions& opt);
std::string format_analyze_table(const AnalyzeResult& r);  // the fold table too when r.fold is filled
std::string render_analyze_svg(const AnalyzeResult& r);
// "" when every statistic and error is finite; else one sentence naming the first affected layers
// (the CLI prints it as an error and exits 1 after the table).
std::string analyze_nonfinite_summary(const AnalyzeResult& r);

}  // namespace sharq
