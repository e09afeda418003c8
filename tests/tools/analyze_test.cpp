// run_analyze with the FP8-fold table (--mxfp4-fp8) on stories260K: the tile counts follow the
// shapes (every weight that reads an input is folded), the statistics are consistent, a plane with no inexact tile folds with zero output error
// (the fold is exact: bit for bit the MXFP4 values), and the exact SharQ-MXFP4 product's own error,
// computed here in double from the packed planes, agrees with the CPU Linear's (a different code
// path) to within FP32 accumulation noise.
#include "sharq/tools/analyze.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>

namespace {

std::string shared(const std::string& rel) { return std::string(SHARQ_SOURCE_DIR) + "/../shared/" + rel; }

TEST(Analyze, Mxfp4Fp8FoldTable) {
  const std::string model = shared("models/stories260K/stories260K.bin");
  if (!std::filesystem::exists(model)) GTEST_SKIP() << "no " << model;
  sharq::AnalyzeOptions o;
  o.model_path = model;
  o.tokenizer_path = shared("models/stories260K/tok512.bin");
  o.data_path = std::string(SHARQ_SOURCE_DIR) + "/README.md";
  o.tokens = 40;
  o.schemes = "mxfp4,sharq-mxfp4";
  o.mxfp4_fp8 = true;
  const sharq::AnalyzeResult r = sharq::run_analyze(o);
  ASSERT_EQ(r.fold.size(), r.rows.size());
  ASSERT_FALSE(r.rows.empty());
  std::map<std::pair<int64_t, std::string>, int64_t> weight_rows;  // (layer, input) -> folded weight rows
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const sharq::AnalyzeRow& row = r.rows[i];
    const sharq::AnalyzeFoldRow& f = r.fold[i];
    SCOPED_TRACE("layer " + std::to_string(row.layer) + " " + row.proj);
    const int64_t tiles_per_row = (row.K + 127) / 128;
    EXPECT_EQ(f.mxfp4_x.tiles, r.tokens * tiles_per_row);
    EXPECT_EQ(f.sharq_s.tiles, r.tokens * tiles_per_row);
    EXPECT_EQ(f.sharq_r.tiles, r.tokens * tiles_per_row);
    EXPECT_GT(f.weight.tiles, 0);
    EXPECT_EQ(f.weight.tiles % tiles_per_row, 0);
    for (const sharq::FoldPlaneStats* p : {&f.weight, &f.mxfp4_x, &f.sharq_s, &f.sharq_r}) {
      EXPECT_LE(p->tiles_inexact, p->tiles);
      EXPECT_LE(p->inexact, p->nonzero);
      EXPECT_GT(p->nonzero, 0);
      EXPECT_EQ(p->tiles_inexact > 0, p->inexact > 0);
    }
    if (f.weight.inexact == 0 && f.mxfp4_x.inexact == 0) {
      EXPECT_EQ(f.mxfp4_fold_err, 0.0);
    }
    if (f.weight.inexact == 0 && f.sharq_s.inexact == 0 && f.sharq_r.inexact == 0) {
      EXPECT_EQ(f.sharq_fold_err, 0.0);
    }
    // the own errors against the CPU Linear's (schemes in the order given), where one weight reads
    // the input (q_proj's input feeds q, k and v, which the fold table stacks)
    ASSERT_EQ(row.rel_err.size(), 2u);
    if (row.proj == "o_proj" || row.proj == "down_proj") {
      EXPECT_NEAR(f.mxfp4_err, row.rel_err[0], 1e-4 * row.rel_err[0] + 1e-7);
      EXPECT_NEAR(f.sharq_err, row.rel_err[1], 1e-4 * row.rel_err[1] + 1e-7);
    }
    EXPECT_GT(f.sharq_err, 0.0);
    weight_rows[{row.layer, row.proj}] = f.weight.tiles / tiles_per_row;
  }
  // q_proj's input feeds q, k and v (gate_proj's gate and up): all of them are folded, so their rows
  // outnumber o_proj's (down_proj's) in stories260K (q + k + v = 128 against 64; gate + up = 344
  // against 64)
  for (const auto& [key, rows] : weight_rows) {
    if (key.second == "q_proj") {
      EXPECT_GT(rows, weight_rows.at({key.first, "o_proj"})) << "layer " << key.first;
    }
    if (key.second == "gate_proj") {
      EXPECT_GT(rows, weight_rows.at({key.first, "down_proj"})) << "layer " << key.first;
    }
  }
  const std::string table = sharq::format_analyze_table(r);
  EXPECT_NE(table.find("MXFP4 on FP8 tensor cores"), std::string::npos);
  EXPECT_NE(table.find("  all "), std::string::npos);
  EXPECT_TRUE(sharq::analyze_nonfinite_summary(r).empty());
}

}  // namespace
