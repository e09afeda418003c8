// The operator-level study: its generator, its error numbers against an independent FP64
// computation, the SharQ-vs-NVFP4 claim on the default outlier-heavy inputs, and --save.
#include "sharq/tools/opcheck.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "sharq/io/npy.h"

namespace {

using namespace sharq;

TEST(OutlierGenerator, IsDeterministicPerSeedAndHasChannelOutliers) {
  const int64_t M = 64, K = 2048;
  const auto a = make_outlier_activations(M, K, 11), b = make_outlier_activations(M, K, 11);
  const auto c = make_outlier_activations(M, K, 12);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // per-channel mean |x|: the top channel stands far above the median (the 20-100x channels)
  std::vector<double> ch(K, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) ch[k] += std::fabs(a[m * K + k]) / M;
  std::vector<double> sorted = ch;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[K / 2], top = sorted.back();
  EXPECT_GT(top / median, 15.0);
  // heavy tails: kurtosis far above the Gaussian 3
  double m2 = 0, m4 = 0;
  for (float x : a) { m2 += double(x) * x; m4 += double(x) * x * x * x; }
  m2 /= a.size(); m4 /= a.size();
  EXPECT_GT(m4 / (m2 * m2), 10.0);
}

double rel_err_fp64(const std::vector<float>& X, const std::vector<float>& W, const std::vector<float>& Y, int64_t M, int64_t K,
                    int64_t N) {
  double num = 0, den = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k) ref += double(X[m * K + k]) * W[n * K + k];
      num += (Y[m * N + n] - ref) * (Y[m * N + n] - ref);
      den += ref * ref;
    }
  return std::sqrt(num / den);
}

TEST(Opcheck, SharqBeatsNvfp4OnTheDefaultOutlierInputs) {
  OpcheckConfig cfg;  // default K (4096) and generator; fewer rows/columns to stay quick
  cfg.M = 32;
  cfg.N = 256;
  cfg.schemes = "nvfp4,sharq,sharq:s24,mxfp4,sharq-mxfp4,hif4,sharq-hif4";
  const OpcheckResult r = run_opcheck(cfg);
  ASSERT_EQ(r.rows.size(), 7u);
  auto row = [&](const std::string& s) {
    for (const auto& x : r.rows)
      if (x.scheme == s) return x;
    ADD_FAILURE() << "missing " << s;
    return OpcheckRow{};
  };
  for (const auto& x : r.rows) std::printf("  %-14s rel %.4e act %.4e w %.4e\n", x.scheme.c_str(), x.rel_err, x.act_err, x.weight_err);
  // the decomposition's own target, the activation error, drops several-fold ...
  EXPECT_LT(row("sharq").act_err, 0.5 * row("nvfp4").act_err);
  EXPECT_LT(row("sharq-mxfp4").act_err, 0.5 * row("mxfp4").act_err);
  EXPECT_LT(row("sharq-hif4").act_err, 0.5 * row("hif4").act_err);
  // ... and the end-to-end error is lower too, despite W32 weights instead of W16
  EXPECT_LT(row("sharq").rel_err, row("nvfp4").rel_err);
  EXPECT_LT(row("sharq-mxfp4").rel_err, row("mxfp4").rel_err);
  EXPECT_LT(row("sharq-hif4").rel_err, row("hif4").rel_err);
  ASSERT_TRUE(row("sharq").gap.has_value());
  EXPECT_GT(*row("sharq").gap, 0.0);
  EXPECT_EQ(row("sharq").baseline, "nvfp4");
}

TEST(Opcheck, ErrorsMatchAnIndependentFp64ComputationAndSaveWritesOperands) {
  const auto dir = std::filesystem::temp_directory_path() / "sharq_opcheck_test";
  std::filesystem::remove_all(dir);
  OpcheckConfig cfg;
  cfg.M = 9; cfg.K = 200; cfg.N = 17;  // K not a multiple of 64
  cfg.schemes = "nvfp4,sharq";
  cfg.save_dir = dir.string();
  const OpcheckResult r = run_opcheck(cfg);
  const auto X = read_npy((dir / "X.npy").string()), W = read_npy((dir / "W.npy").string());
  ASSERT_EQ(X.shape, (std::vector<int64_t>{9, 200}));
  ASSERT_EQ(W.shape, (std::vector<int64_t>{17, 200}));
  for (const auto& row : r.rows) {
    const std::string stem = (dir / row.scheme).string();
    const auto Y = read_npy(stem + "_Y.npy");
    EXPECT_NEAR(rel_err_fp64(X.data, W.data, Y.data, 9, 200, 17), row.rel_err, 1e-6 + 1e-4 * row.rel_err) << row.scheme;
    // Y is the product of the saved dequantized operands (FP32 rounding of the saved scales aside)
    const auto Xh = read_npy(stem + "_Xhat.npy"), Wh = read_npy(stem + "_What.npy");
    EXPECT_LT(rel_err_fp64(Xh.data, Wh.data, Y.data, 9, 200, 17), 1e-5) << row.scheme;
  }
  const auto S = read_npy((dir / "sharq_Shat.npy").string()), R = read_npy((dir / "sharq_Rhat.npy").string());
  const auto Xh = read_npy((dir / "sharq_Xhat.npy").string());
  for (size_t i = 0; i < Xh.data.size(); ++i)
    EXPECT_NEAR(Xh.data[i], S.data[i] + R.data[i], 1e-6f * std::fabs(Xh.data[i]) + 1e-30f);
}

TEST(Opcheck, LoadedInputsAndShapeMismatch) {
  const auto dir = std::filesystem::temp_directory_path() / "sharq_opcheck_load";
  std::filesystem::create_directories(dir);
  const auto X = make_outlier_activations(4, 96, 3), W = make_gaussian_weights(5, 96, 4), W2 = make_gaussian_weights(5, 64, 4);
  write_npy((dir / "x.npy").string(), X.data(), {4, 96});
  write_npy((dir / "w.npy").string(), W.data(), {5, 96});
  write_npy((dir / "w2.npy").string(), W2.data(), {5, 64});
  OpcheckConfig cfg;
  cfg.x_path = (dir / "x.npy").string();
  cfg.w_path = (dir / "w.npy").string();
  cfg.schemes = "sharq";
  const OpcheckResult r = run_opcheck(cfg);
  EXPECT_EQ(r.M, 4); EXPECT_EQ(r.K, 96); EXPECT_EQ(r.N, 5);
  EXPECT_EQ(r.x_source, cfg.x_path);

  cfg.w_path = (dir / "w2.npy").string();
  try {
    run_opcheck(cfg);
    FAIL() << "mismatched K accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("shape mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("w2.npy"), std::string::npos) << e.what();
  }
  cfg.w_path.clear();
  cfg.schemes = "sharq,bogus";
  EXPECT_THROW(run_opcheck(cfg), std::invalid_argument);
}

// Empty shapes have nothing to measure (every error would print as 0): refused, naming the
// dimensions and where they came from; so are sizes beyond the memory bound, before allocating.
TEST(Opcheck, EmptyAndOversizedShapesAreRefused) {
  OpcheckConfig cfg;
  cfg.M = 0; cfg.K = 64; cfg.N = 8;
  cfg.schemes = "nvfp4,sharq";
  auto message = [&] {
    try {
      run_opcheck(cfg);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message().find("empty shape M=0 (-M)"), std::string::npos) << message();
  cfg.M = 3; cfg.K = 0;
  EXPECT_NE(message().find("K=0 (-K)"), std::string::npos) << message();
  cfg.K = 100000000;
  EXPECT_NE(message().find("K=100000000 (-K)"), std::string::npos) << message();
  EXPECT_NE(message().find("GiB limit"), std::string::npos) << message();
  cfg.K = 64;
  cfg.max_bytes = 1000;  // the bound is a parameter
  EXPECT_NE(message().find("GiB limit"), std::string::npos) << message();
  EXPECT_GT(opcheck_bytes(int64_t{1} << 62, int64_t{1} << 62, 1), 1e37);  // no overflow

  // a (4, 0) .npy is read (a valid array) and then refused here with its path
  const auto dir = std::filesystem::temp_directory_path() / "sharq_opcheck_empty";
  std::filesystem::create_directories(dir);
  write_npy((dir / "x.npy").string(), nullptr, {4, 0});
  cfg = OpcheckConfig{};
  cfg.x_path = (dir / "x.npy").string();
  cfg.schemes = "nvfp4";
  EXPECT_NE(message().find("x.npy: X is 4x0, an empty array"), std::string::npos) << message();
}

TEST(Opcheck, CsvAndJsonCarryEveryRow) {
  OpcheckConfig cfg;
  cfg.M = 4; cfg.K = 128; cfg.N = 8;
  cfg.schemes = "fp32,nvfp4,sharq";
  const auto r = run_opcheck(cfg);
  const std::string csv = format_opcheck_csv(r), json = format_opcheck_json(r);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
  EXPECT_NE(json.find("\"scheme\": \"sharq\""), std::string::npos);
  EXPECT_NE(json.find("\"gap_recovered\""), std::string::npos);
  EXPECT_NE(format_opcheck_table(r).find("sharq"), std::string::npos);
}

}  // namespace
