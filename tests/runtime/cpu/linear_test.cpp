// Linear layers of every scheme (kernels/cpu/linear.h):
//  - forward() equals an FP64 computation from the layer's own dequantized operands, within a
//    stated tolerance, for every scheme at shapes with K not a multiple of 64;
//  - the operands are the right ones (the spec's quantizers, the W32 shared payload for SharQ, ...);
//  - per-token scales make a row's output independent of the batch; per-tensor scales do not;
//  - accuracy ordering on outlier-heavy activations; NaN/Inf containment; empty shapes; bad input;
//    scheme names.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include "sharq/decompose/sharq_decompose.h"
#include "../../support/bit_compare.h"
#include "../../support/exceptions.h"
#include "../../support/test_inputs.h"
#include "sharq/runtime/cpu/linear.h"

namespace sharq {
namespace {

using sharq_test::outlier_heavy;
using sharq_test::Rng;
using sharq_test::bit_equal;
using sharq_test::float_bits;
using sharq_test::same_bits;

// ================================================================================================
// Utilities




// Weights: Gaussian, std 1/sqrt(K), with 1/128 of the entries 8x larger.
std::vector<float> weights(int64_t N, int64_t K, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> w(static_cast<size_t>(N * K));
  const double sd = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(K, 1)));
  for (float& v : w) v = static_cast<float>(rng.normal() * sd * (rng.index(128) == 0 ? 8.0 : 1.0));
  return w;
}
std::vector<float> bias_of(int64_t N, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> b(static_cast<size_t>(N));
  for (float& v : b) v = static_cast<float>(rng.normal());
  return b;
}

// The schemes under test: the 11 base names and option variants.
std::vector<std::string> all_scheme_texts() {
  std::vector<std::string> s = scheme_base_names();
  for (const char* v : {"sharq:s24", "sharq:tensor", "nvfp4:tensor", "sharq:nm2_8", "sharq:l1", "sharq:s24:tensor",
                        "sharq:l2", "sharq:maxmin", "sharq-mxfp4:s24", "sharq-hif4:p48", "sharq-hif4:nm2_4",
                        "sharq:merged", "sharq:w16", "sharq:s24:merged:w16"})
    s.emplace_back(v);
  return s;
}
// Schemes whose activation preparation is a per-row function of the row (no per-tensor scale).
bool row_independent(const Scheme& s) { return !s.has_act_global_scale() || s.act_scale == GlobalScale::per_row; }
// Schemes whose activations are block- or FP8-quantized (a non-finite value becomes a NaN scale/code).
bool quantized_activations(const Scheme& s) {
  return s.kind != SchemeKind::fp32 && s.kind != SchemeKind::fp16 && s.kind != SchemeKind::bf16 &&
         s.kind != SchemeKind::w4a16;
}

// ---- independent test-side roundings (value tables / neighbours, no code shared with src/) ----
// E4M3 (fn) magnitudes, codes 0..0x7E ascending; nearest, ties to the even code, saturate at 448.
double e4m3_round(double a) {
  static const std::vector<double> mag = [] {
    std::vector<double> r;
    for (int c = 0; c <= 0x7E; ++c) {
      const int e = c >> 3, m = c & 7;
      r.push_back(e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7));
    }
    return r;
  }();
  const double x = std::fabs(a);
  double q;
  if (x >= mag.back()) {
    q = mag.back();
  } else {
    const size_t hi = static_cast<size_t>(std::upper_bound(mag.begin(), mag.end(), x) - mag.begin()), lo = hi - 1;
    const double dlo = x - mag[lo], dhi = mag[hi] - x;
    q = dlo < dhi ? mag[lo] : (dhi < dlo ? mag[hi] : (lo % 2 == 0 ? mag[lo] : mag[hi]));
  }
  return a < 0 ? -q : q;
}
bool e4m3_representable(float v) { return std::isfinite(v) && e4m3_round(v) == v; }
// BF16 RNE via the two bf16 neighbours of x.
float bf16_round(float x) {
  const uint32_t u = float_bits(x), t = u & 0xFFFF0000u;
  float lo, hi;
  std::memcpy(&lo, &t, 4);
  const uint32_t t2 = t + 0x10000u;
  std::memcpy(&hi, &t2, 4);
  const double dlo = std::fabs(static_cast<double>(x) - lo), dhi = std::fabs(static_cast<double>(hi) - x);
  if (dlo != dhi) return dlo < dhi ? lo : hi;
  return (t & 0x10000u) == 0 ? lo : hi;
}
float fp16_round(float x) { return static_cast<float>(static_cast<_Float16>(x)); }  // the compiler's RNE

float amax_finite_row(const float* v, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(v[i])) m = std::max(m, std::fabs(v[i]));
  return m;
}
float nvfp4_g(float amax) {
  const float g = amax / 2688.0f;
  return g < 1e-9f ? 1e-9f : g;
}

// ================================================================================================
// FP64 reference from the operands and the tolerance.
//
// yref[m][n] = rs[m] cs[n] sum_k double(x[m][k]) double(w[n][k]) + bias[n]  (products exact in FP64)
// Tolerance: |y - yref| <= 1e-5 (|rs cs| sum_k |x w| + |bias|) + 1e-30. forward() accumulates in
// FP32 (FMA allowed, order free), then applies one FP32 scale product and one bias add; for K <= a
// few hundred the accumulated rounding is a few 1e-7 of sum |x w| in practice, so 1e-5 leaves
// margin without hiding a wrong operand (which would be off by O(1e-2) or more).
struct Ref {
  std::vector<double> y, tol;
};
Ref reference(const LinearOperands& o, const std::vector<float>& x, const float* bias) {
  Ref r;
  r.y.resize(static_cast<size_t>(o.M * o.N));
  r.tol.resize(r.y.size());
  for (int64_t m = 0; m < o.M; ++m)
    for (int64_t n = 0; n < o.N; ++n) {
      double acc = 0, mag = 0;
      for (int64_t k = 0; k < o.K; ++k) {
        const double p = static_cast<double>(x[m * o.K + k]) * o.w[n * o.K + k];
        acc += p;
        mag += std::fabs(p);
      }
      const double s = static_cast<double>(o.row_scale[m]) * o.col_scale[n];
      const double b = bias ? bias[n] : 0.0;
      r.y[m * o.N + n] = s * acc + b;
      r.tol[m * o.N + n] = 1e-5 * (std::fabs(s) * mag + std::fabs(b)) + 1e-30;
    }
  return r;
}

// ================================================================================================
// 1. forward() == FP64 from operands(), every scheme, several shapes, with and without bias.

// Runs OpenMP regions on one thread while alive. ForwardMatchesFp64ReferenceFromOperands runs ~1000
// tiny GEMMs; on a loaded machine (ctest -j, other jobs) each multi-threaded fork/join can wait a
// scheduler time slice, which made it 10x slower. The threaded paths are checked, at sizes where
// they matter, by ForwardMatchesFp64ReferenceLargeShape and PerTokenOutputIsBatchInvariant.
class SingleThreadScope {
 public:
  SingleThreadScope() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SingleThreadScope() { omp_set_num_threads(saved_); }
  SingleThreadScope(const SingleThreadScope&) = delete;
  SingleThreadScope& operator=(const SingleThreadScope&) = delete;

 private:
  int saved_;
};

TEST(Linear, ForwardMatchesFp64ReferenceFromOperands) {
  const SingleThreadScope single_thread;
  int cases = 0, with_bias_cases = 0;
  for (const std::string& text : all_scheme_texts()) {
    const Scheme scheme = parse_scheme(text);
    for (const int64_t K : {16, 40, 100, 300})
      for (const int64_t N : {1, 7, 33, 70})
        for (const int64_t M : {1, 3, 17}) {
          // bias on for M = 3 or off for M = 1, 17, flipped on alternate N: every (K, N) and every
          // M sees both (all combinations would double the runtime for no new code path)
          const bool with_bias = (M == 3) != (N == 7 || N == 70);
          {
            SCOPED_TRACE(::testing::Message() << text << " M=" << M << " K=" << K << " N=" << N << " bias=" << with_bias);
            const std::vector<float> W = weights(N, K, 100 + static_cast<uint64_t>(K * 1000 + N));
            const std::vector<float> b = bias_of(N, 7 + static_cast<uint64_t>(N));
            const std::vector<float> X = outlier_heavy(M, K, 200 + static_cast<uint64_t>(M * 1000 + K));
            const float* bp = with_bias ? b.data() : nullptr;
            const auto lin = Linear::create(scheme, W.data(), N, K, bp);
            ASSERT_EQ(lin->in_features(), K);
            ASSERT_EQ(lin->out_features(), N);
            const std::vector<float> Y = lin->forward(X, M);
            const LinearOperands o = lin->operands(X.data(), M);
            ASSERT_EQ(o.x.size(), static_cast<size_t>(M * K));
            ASSERT_EQ(o.w.size(), static_cast<size_t>(N * K));
            ASSERT_EQ(o.row_scale.size(), static_cast<size_t>(M));
            ASSERT_EQ(o.col_scale.size(), static_cast<size_t>(N));
            const Ref ref = reference(o, o.x, bp);
            for (size_t i = 0; i < Y.size(); ++i)
              ASSERT_NEAR(Y[i], ref.y[i], ref.tol[i]) << "at (" << i / N << ", " << i % N << ")";
            if (scheme.is_sharq()) {
              // X^ = S^ + R^ in FP32, and the two-path sum rs cs (sum s^ w + sum r^ w) agrees with forward()
              ASSERT_EQ(o.s_hat.size(), o.x.size());
              ASSERT_EQ(o.r_hat.size(), o.x.size());
              for (size_t i = 0; i < o.x.size(); ++i) {
                if (scheme.merged) {  // one rounding of the exact sum to FP16
                  ASSERT_TRUE(same_bits(o.x[i], fp16_round(o.s_hat[i] + o.r_hat[i]))) << "X^ != fp16(S^ + R^) at " << i;
                  continue;
                }
                ASSERT_TRUE(same_bits(o.x[i], o.s_hat[i] + o.r_hat[i])) << "X^ != S^ + R^ at " << i;
                // NVFP4: S^ and R^ are multiples of 2^-10 below 2^12, so the FP32 sum is exact
                if (scheme.kind == SchemeKind::sharq) {
                  ASSERT_EQ(static_cast<double>(o.x[i]), static_cast<double>(o.s_hat[i]) + o.r_hat[i]) << i;
                }
              }
              const Ref rs = reference(o, o.s_hat, nullptr), rr = reference(o, o.r_hat, bp);
              if (!scheme.merged) {  // merged computes fp16(S^ + R^), not the two-path sum
                for (size_t i = 0; i < Y.size(); ++i) {
                  ASSERT_NEAR(Y[i], rs.y[i] + rr.y[i], ref.tol[i]) << "two-path sum at (" << i / N << ", " << i % N << ")";
                }
              }
            } else {
              ASSERT_TRUE(o.s_hat.empty() && o.r_hat.empty());
            }
            ++cases;
            with_bias_cases += with_bias;
          }
        }
  }
  EXPECT_EQ(cases, static_cast<int>(all_scheme_texts().size()) * 4 * 4 * 3);
  EXPECT_EQ(with_bias_cases, static_cast<int>(all_scheme_texts().size()) * 4 * 6);
}

// A shape big enough for the OpenMP paths of the preparation (rows x cols > 2^15) and several
// K chunks of the GEMM (K > kGemmKC), and more than one panel of columns.
TEST(Linear, ForwardMatchesFp64ReferenceLargeShape) {
  constexpr int64_t M = 67, K = 600, N = 3 * kGemmNR + 5;
  const std::vector<float> W = weights(N, K, 31), b = bias_of(N, 32), X = outlier_heavy(M, K, 33);
  for (const std::string& text : all_scheme_texts()) {
    SCOPED_TRACE(text);
    const auto lin = Linear::create(parse_scheme(text), W.data(), N, K, b.data());
    const std::vector<float> Y = lin->forward(X, M);
    const LinearOperands o = lin->operands(X.data(), M);
    const Ref ref = reference(o, o.x, b.data());
    for (size_t i = 0; i < Y.size(); ++i) ASSERT_NEAR(Y[i], ref.y[i], ref.tol[i]) << "at (" << i / N << ", " << i % N << ")";
  }
}

// ================================================================================================
// 2. The operands are the spec's.

TEST(Linear, OperandsAreTheSchemesQuantizedValues) {
  constexpr int64_t M = 5, K = 100, N = 9;
  const std::vector<float> W = weights(N, K, 41), X = outlier_heavy(M, K, 42);
  const float g_w = nvfp4_g(amax_finite_row(W.data(), N * K));
  const std::vector<float> ones_m(M, 1.0f), ones_n(N, 1.0f);
  for (const std::string& text : all_scheme_texts()) {
    SCOPED_TRACE(text);
    const Scheme s = parse_scheme(text);
    const auto lin = Linear::create(s, W.data(), N, K);
    const LinearOperands o = lin->operands(X.data(), M);
    std::vector<float> ex, ew, ers = ones_m, ecs = ones_n;
    switch (s.kind) {
      case SchemeKind::fp32: ex = X; ew = W; break;
      case SchemeKind::fp16:
        for (float v : X) ex.push_back(fp16_round(v));
        for (float v : W) ew.push_back(fp16_round(v));
        break;
      case SchemeKind::bf16:
        for (float v : X) ex.push_back(bf16_round(v));
        for (float v : W) ew.push_back(bf16_round(v));
        break;
      case SchemeKind::fp8: {
        // per-token activation scale amax/448, per-output-channel weight scale amax/448, E4M3 values
        auto fp8 = [](const std::vector<float>& T, int64_t R, std::vector<float>& q, std::vector<float>& sc) {
          for (int64_t r = 0; r < R; ++r) {
            const float a = amax_finite_row(T.data() + r * K, K);
            sc[r] = a / 448.0f;
            for (int64_t k = 0; k < K; ++k) q.push_back(static_cast<float>(e4m3_round(T[r * K + k] / sc[r])));
          }
        };
        fp8(X, M, ex, ers);
        fp8(W, N, ew, ecs);
        for (const float v : o.x) ASSERT_TRUE(e4m3_representable(v)) << v;
        for (const float v : o.w) ASSERT_TRUE(e4m3_representable(v)) << v;
        break;
      }
      case SchemeKind::w4a16:
        for (float v : X) ex.push_back(bf16_round(v));
        ew = dequantize_matrix(quantize_matrix<Nvfp4_16>(W.data(), N, K, GlobalScale::per_tensor), false);
        ecs.assign(N, g_w);
        break;
      case SchemeKind::nvfp4: {
        const auto qx = quantize_matrix<Nvfp4_16>(X.data(), M, K, s.act_scale);
        ex = dequantize_matrix(qx, false);
        for (int64_t m = 0; m < M; ++m)
          ers[m] = nvfp4_g(s.act_scale == GlobalScale::per_row ? amax_finite_row(X.data() + m * K, K)
                                                               : amax_finite_row(X.data(), M * K));
        ew = dequantize_matrix(quantize_matrix<Nvfp4_16>(W.data(), N, K, GlobalScale::per_tensor), false);
        ecs.assign(N, g_w);
        break;
      }
      case SchemeKind::mxfp4:
        ex = dequantize_matrix(quantize_matrix<Mxfp4>(X.data(), M, K, GlobalScale::none), false);
        ew = dequantize_matrix(quantize_matrix<Mxfp4>(W.data(), N, K, GlobalScale::none), false);
        break;
      case SchemeKind::hif4:
        ex = dequantize_matrix(quantize_matrix<Hif4>(X.data(), M, K, GlobalScale::none), false);
        ew = dequantize_matrix(quantize_matrix<Hif4>(W.data(), N, K, GlobalScale::none), false);
        break;
      case SchemeKind::sharq:
      case SchemeKind::sharq_mxfp4:
      case SchemeKind::sharq_hif4: {
        const SharqFormat f = s.kind == SchemeKind::sharq ? SharqFormat::nvfp4
                              : s.kind == SchemeKind::sharq_mxfp4 ? SharqFormat::mxfp4 : SharqFormat::hif4;
        const DenseDecomposition d = sharq_decompose_dense(X.data(), M, K, f, s.mask, s.act_scale);
        ASSERT_TRUE(bit_equal(o.s_hat, d.s_hat)) << "S^";
        ASSERT_TRUE(bit_equal(o.r_hat, d.r_hat)) << "R^";
        for (size_t i = 0; i < d.s_hat.size(); ++i)  // merged: the sum (exact in FP32) rounded once to FP16
          ex.push_back(s.merged ? fp16_round(d.s_hat[i] + d.r_hat[i]) : d.s_hat[i] + d.r_hat[i]);
        if (s.kind == SchemeKind::sharq && s.w16) {  // NVFP4-16 weights, the baseline's payload
          for (int64_t m = 0; m < M; ++m) ers[m] = d.g.size() == 1 ? d.g[0] : d.g[m];
          ew = dequantize_matrix(quantize_matrix<Nvfp4_16>(W.data(), N, K, GlobalScale::per_tensor), false);
          ecs.assign(N, g_w);
        } else if (s.kind == SchemeKind::sharq) {
          for (int64_t m = 0; m < M; ++m) ers[m] = d.g.size() == 1 ? d.g[0] : d.g[m];
          // W32 shared: one NVFP4-32 payload, per-tensor g_w; its 16-block view decodes identically
          const auto q32 = quantize_matrix<Nvfp4_32>(W.data(), N, K, GlobalScale::per_tensor);
          ew = dequantize_matrix(q32, false);
          ecs.assign(N, g_w);
          for (int64_t n = 0; n < N; ++n)
            for (int64_t j = 0; j * 16 < K; ++j) {
              float v16[16];
              dequantize_block<Nvfp4_16>(nvfp4_16_view(q32, n, j), v16);
              for (int k = 0; k < 16 && j * 16 + k < K; ++k) ASSERT_TRUE(same_bits(o.w[n * K + j * 16 + k], v16[k]));
            }
          // and it is not the NVFP4-16 payload of the baseline (the test would be blind otherwise)
          EXPECT_FALSE(bit_equal(o.w, dequantize_matrix(quantize_matrix<Nvfp4_16>(W.data(), N, K, GlobalScale::per_tensor), false)));
        } else if (s.kind == SchemeKind::sharq_mxfp4) {
          ew = dequantize_matrix(quantize_matrix<Mxfp4>(W.data(), N, K, GlobalScale::none), false);
        } else {
          ew = dequantize_matrix(quantize_matrix<Hif4>(W.data(), N, K, GlobalScale::none), false);
        }
        break;
      }
    }
    EXPECT_TRUE(bit_equal(o.x, ex)) << "x";
    EXPECT_TRUE(bit_equal(o.w, ew)) << "w";
    EXPECT_TRUE(bit_equal(o.row_scale, ers)) << "row_scale";
    EXPECT_TRUE(bit_equal(o.col_scale, ecs)) << "col_scale";
  }
}

// ================================================================================================
// 3. Batch invariance: with per-token scales, a row's output does not depend on the other rows.

TEST(Linear, PerTokenOutputIsBatchInvariant) {
  constexpr int64_t K = 300, N = 37;
  const std::vector<float> W = weights(N, K, 51), b = bias_of(N, 52);
  const std::vector<float> row = outlier_heavy(1, K, 53);
  // Batches that hold `row` at position `at`, among different other rows.
  struct Batch { int64_t M, at; uint64_t seed; bool huge; };
  const Batch batches[] = {{5, 2, 54, false}, {17, 9, 55, true}, {130, 127, 56, true}, {7, 0, 57, false}};
  int checked = 0;
  for (const std::string& text : all_scheme_texts()) {
    const Scheme s = parse_scheme(text);
    if (!row_independent(s)) continue;
    SCOPED_TRACE(text);
    const auto lin = Linear::create(s, W.data(), N, K, b.data());
    const std::vector<float> alone = lin->forward(row, 1);
    for (const Batch& bt : batches) {
      std::vector<float> X = outlier_heavy(bt.M, K, bt.seed);
      if (bt.huge)  // a row with a huge outlier (1e4x the bulk), away from `at`
        for (int64_t k = 0; k < K; k += 7) X[((bt.at + 3) % bt.M) * K + k] *= 1e4f;
      std::copy(row.begin(), row.end(), X.begin() + bt.at * K);
      const std::vector<float> Y = lin->forward(X, bt.M);
      const std::vector<float> mine(Y.begin() + bt.at * N, Y.begin() + (bt.at + 1) * N);
      ASSERT_TRUE(bit_equal(mine, alone)) << "batch M=" << bt.M << " at " << bt.at;
      ++checked;
    }
  }
  // row-independent: all 11 base names (nvfp4 and sharq default to per-token g_x), sharq:s24,
  // sharq:nm2_8, sharq:l1, sharq:l2, sharq:maxmin, sharq-mxfp4:s24, sharq-hif4:p48, sharq-hif4:nm2_4,
  // sharq:merged, sharq:w16, sharq:s24:merged:w16; not: sharq:tensor, nvfp4:tensor, sharq:s24:tensor
  EXPECT_EQ(checked, 4 * 22);
}

TEST(Linear, PerTensorOutputDependsOnTheBatch) {
  constexpr int64_t K = 300, N = 37;
  const std::vector<float> W = weights(N, K, 61);
  const std::vector<float> row = outlier_heavy(1, K, 62);
  std::vector<float> X = outlier_heavy(4, K, 63);
  std::copy(row.begin(), row.end(), X.begin());
  for (int64_t k = 0; k < K; k += 5) X[2 * K + k] *= 1e3f;  // an outlier row
  for (const char* text : {"nvfp4:tensor", "sharq:tensor", "sharq:s24:tensor", "sharq:merged:tensor"}) {
    SCOPED_TRACE(text);
    const Scheme s = parse_scheme(text);
    ASSERT_FALSE(row_independent(s));
    const auto lin = Linear::create(s, W.data(), N, K);
    const std::vector<float> alone = lin->forward(row, 1);
    const std::vector<float> Y = lin->forward(X, 4);
    const std::vector<float> mine(Y.begin(), Y.begin() + N);
    int differ = 0;
    for (int64_t n = 0; n < N; ++n) differ += !same_bits(mine[n], alone[n]);
    EXPECT_GT(differ, 0) << "per-tensor g_x should make row 0 depend on the outlier row";
    // the per-token variant of the same scheme is immune
    Scheme t = s;
    t.act_scale = GlobalScale::per_row;
    const auto lt = Linear::create(t, W.data(), N, K);
    const std::vector<float> Yt = lt->forward(X, 4);
    EXPECT_TRUE(bit_equal(std::vector<float>(Yt.begin(), Yt.begin() + N), lt->forward(row, 1)));
  }
}

// ================================================================================================
// 4. Accuracy ordering on outlier-heavy activations (outlier_heavy(), seed 71, 16 outlier channels;
// weights(), seed 72).
//
// Three relative errors per scheme, against Y = X W^T in FP64:
//   end to end   ||Y - Y_ref|| / ||Y_ref|| of forward();
//   activation   the same with the scheme's activations rs X^ and the exact W (FP64 from operands);
//   weight       the same with the exact X and the scheme's weights W^ cs.
// What holds robustly (checked over 12 activation/weight mixes while writing this test, asserted
// with margin): bf16 < fp8 < nvfp4 end to end; SharQ's activation error is a small fraction of its
// baseline's, for all three formats; sharq-mxfp4 < mxfp4 end to end (same MXFP4 weights).
// What does NOT hold robustly, and is only printed: sharq < nvfp4 end to end. SharQ's weights are
// the W32 shared NVFP4-32 payload (SHARQ_SPEC step 6), whose error on Gaussian weights is 10-20%
// larger than NVFP4-16's, and at this size the weight error dominates both schemes' total (on real
// LLM activations, with larger outliers, the activation side dominates instead).
TEST(Linear, AccuracyOrderingOnOutlierHeavyActivations) {
  constexpr int64_t M = 48, K = 1024, N = 96;
  const std::vector<float> X = outlier_heavy(M, K, 71, 16), W = weights(N, K, 72);
  auto matmul = [&](const float* x, const float* rs, const float* w, const float* cs) {
    std::vector<double> y(static_cast<size_t>(M * N));
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(x[m * K + k]) * w[n * K + k];
        y[m * N + n] = acc * (rs ? rs[m] : 1.0) * (cs ? cs[n] : 1.0);
      }
    return y;
  };
  const std::vector<double> yref = matmul(X.data(), nullptr, W.data(), nullptr);
  double ref_norm = 0;
  for (const double v : yref) ref_norm += v * v;
  auto rel = [&](const auto& y) {
    double e = 0;
    for (size_t i = 0; i < y.size(); ++i) e += (y[i] - yref[i]) * (y[i] - yref[i]);
    return std::sqrt(e / ref_norm);
  };
  struct Err { double total, act, weight; };
  auto errors = [&](const char* text) {
    const auto lin = Linear::create(parse_scheme(text), W.data(), N, K);
    const LinearOperands o = lin->operands(X.data(), M);
    const Err e{rel(lin->forward(X, M)), rel(matmul(o.x.data(), o.row_scale.data(), W.data(), nullptr)),
                rel(matmul(X.data(), nullptr, o.w.data(), o.col_scale.data()))};
    std::printf("  %-12s rel err: end to end %.5f  activation %.5f  weight %.5f\n", text, e.total, e.act, e.weight);
    return e;
  };
  const Err fp32 = errors("fp32"), fp16 = errors("fp16"), bf16 = errors("bf16"), fp8 = errors("fp8");
  const Err w4a16 = errors("w4a16"), nvfp4 = errors("nvfp4:tensor"), nvfp4_tok = errors("nvfp4");
  const Err sharq = errors("sharq:tensor"), sharq_tok = errors("sharq"), sharq_s24 = errors("sharq:s24:tensor");
  const Err mxfp4 = errors("mxfp4"), sharq_mx = errors("sharq-mxfp4");
  const Err hif4 = errors("hif4"), sharq_hif4 = errors("sharq-hif4");
  EXPECT_LT(fp32.total, 1e-6);
  // end to end: bf16 < fp8 < nvfp4 (and fp16 < fp8), each with a factor-2 margin
  EXPECT_LT(fp16.total, 0.5 * fp8.total);
  EXPECT_LT(bf16.total, 0.5 * fp8.total);
  EXPECT_LT(fp8.total, 0.5 * nvfp4.total);
  EXPECT_LT(w4a16.act, 0.1 * nvfp4.act);  // BF16 activations
  // SharQ's activation error is a small fraction of its baseline's (observed 0.08-0.2)
  EXPECT_LT(sharq.act, 0.35 * nvfp4.act);
  EXPECT_LT(sharq_tok.act, 0.35 * nvfp4_tok.act);
  EXPECT_LT(sharq_s24.act, 0.35 * nvfp4.act);
  EXPECT_LT(sharq_mx.act, 0.35 * mxfp4.act);
  EXPECT_LT(sharq_hif4.act, 0.35 * hif4.act);
  // with the very same weights, SharQ wins end to end too (observed <= 0.86)
  EXPECT_EQ(sharq_mx.weight, mxfp4.weight);
  EXPECT_LT(sharq_mx.total, 0.95 * mxfp4.total);
  // the W32 shared payload: sharq and nvfp4 have different weights (the reason sharq vs nvfp4
  // end to end is only printed)
  EXPECT_NE(sharq.weight, nvfp4.weight);
}

// ================================================================================================
// 5. NaN / Inf containment.

TEST(Linear, NonFiniteActivationPoisonsOnlyItsRow) {
  constexpr int64_t M = 4, K = 100, N = 11;
  const std::vector<float> W = weights(N, K, 81), b = bias_of(N, 82);
  std::vector<float> X = outlier_heavy(M, K, 83);
  X[1 * K + 37] = std::numeric_limits<float>::quiet_NaN();
  X[2 * K + 80] = std::numeric_limits<float>::infinity();
  X[3 * K + 3] = -std::numeric_limits<float>::infinity();
  for (const std::string& text : all_scheme_texts()) {
    SCOPED_TRACE(text);
    const Scheme s = parse_scheme(text);
    const auto lin = Linear::create(s, W.data(), N, K, b.data());
    const std::vector<float> Y = lin->forward(X, M);
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_TRUE(std::isfinite(Y[0 * N + n])) << "clean row 0, column " << n;
      EXPECT_TRUE(std::isnan(Y[1 * N + n])) << "NaN row, column " << n;
      for (int64_t m : {2, 3}) {
        EXPECT_FALSE(std::isfinite(Y[m * N + n])) << "Inf row " << m << ", column " << n;
        // a quantized activation block with an Inf gets the NaN scale/code: the row is NaN
        if (quantized_activations(s)) {
          EXPECT_TRUE(std::isnan(Y[m * N + n])) << "Inf row " << m << ", column " << n;
        }
      }
    }
  }
}

TEST(Linear, NonFiniteWeightPoisonsOnlyItsColumn) {
  constexpr int64_t M = 5, K = 100, N = 11;
  std::vector<float> W = weights(N, K, 91);
  W[3 * K + 50] = std::numeric_limits<float>::quiet_NaN();
  W[7 * K + 99] = -std::numeric_limits<float>::infinity();
  const std::vector<float> X = outlier_heavy(M, K, 92);
  for (const std::string& text : all_scheme_texts()) {
    SCOPED_TRACE(text);
    const Scheme s = parse_scheme(text);
    const auto lin = Linear::create(s, W.data(), N, K);
    const std::vector<float> Y = lin->forward(X, M);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        if (n == 3) {
          EXPECT_TRUE(std::isnan(Y[m * N + n])) << "(" << m << ", " << n << ")";
        } else if (n == 7) {
          EXPECT_FALSE(std::isfinite(Y[m * N + n])) << "(" << m << ", " << n << ")";
          if (s.kind != SchemeKind::fp32 && s.kind != SchemeKind::fp16 && s.kind != SchemeKind::bf16) {
            EXPECT_TRUE(std::isnan(Y[m * N + n])) << "quantized weights: Inf -> NaN scale/code";
          }
        } else {
          EXPECT_TRUE(std::isfinite(Y[m * N + n])) << "(" << m << ", " << n << ")";
        }
      }
  }
}

// ================================================================================================
// 6. Empty shapes.

TEST(Linear, EmptyShapesWork) {
  const std::vector<float> none;
  for (const std::string& text : all_scheme_texts()) {
    SCOPED_TRACE(text);
    const Scheme s = parse_scheme(text);
    {  // M = 0
      const std::vector<float> W = weights(7, 40, 1);
      const auto lin = Linear::create(s, W.data(), 7, 40);
      EXPECT_TRUE(lin->forward(none, 0).empty());
      lin->forward(nullptr, 0, nullptr);
      const LinearOperands o = lin->operands(nullptr, 0);
      EXPECT_TRUE(o.x.empty() && o.row_scale.empty());
      EXPECT_EQ(o.w.size(), 7u * 40u);
    }
    {  // K = 0: Y = bias (or 0)
      const std::vector<float> b = bias_of(5, 2);
      for (const bool with_bias : {false, true}) {
        const auto lin = Linear::create(s, none.data(), 5, 0, with_bias ? b.data() : nullptr);
        const std::vector<float> Y = lin->forward(none, 3);
        ASSERT_EQ(Y.size(), 15u);
        for (int64_t m = 0; m < 3; ++m)
          for (int64_t n = 0; n < 5; ++n) EXPECT_EQ(Y[m * 5 + n], with_bias ? b[n] : 0.0f) << m << ", " << n;
        const LinearOperands o = lin->operands(none.data(), 3);
        EXPECT_TRUE(o.x.empty() && o.w.empty());
      }
    }
    {  // N = 0
      const auto lin = Linear::create(s, none.data(), 0, 40);
      const std::vector<float> X = outlier_heavy(3, 40, 3);
      EXPECT_TRUE(lin->forward(X, 3).empty());
      EXPECT_LE(lin->weight_bytes(), 16u);  // at most a second-level scale
    }
  }
}

// ================================================================================================
// 7. Bad input.

using sharq_test::what_of;

TEST(Linear, BadInputThrowsWithAHelpfulMessage) {
  constexpr int64_t K = 40, N = 7;
  const std::vector<float> W = weights(N, K, 5);
  const auto lin = Linear::create(parse_scheme("sharq"), W.data(), N, K);
  const std::string wrong = what_of([&] { lin->forward(std::vector<float>(3 * K - 1), 3); });
  EXPECT_NE(wrong.find("expected"), std::string::npos) << wrong;
  EXPECT_NE(wrong.find("3 x 40"), std::string::npos) << "names the expected M x K: " << wrong;
  EXPECT_NE(what_of([&] { lin->forward(std::vector<float>(), -1); }), "<no exception>");
  EXPECT_NE(what_of([&] { lin->forward(nullptr, -1, nullptr); }), "<no exception>");
  EXPECT_NE(what_of([&] { Linear::create(parse_scheme("fp32"), nullptr, 3, 4); }), "<no exception>");
  EXPECT_NE(what_of([&] { Linear::create(parse_scheme("fp32"), W.data(), -1, 4); }), "<no exception>");
}


// Weights read in place (a quantized checkpoint's layout, BF16/FP16 bits): the same outputs, bit for
// bit, as the layers built from copies, at any alignment, and the layer keeps the bytes alive.
TEST(Linear, InPlaceWeightsComputeWhatTheCopiesCompute) {
  const int64_t M = 5, N = 24, K = 80;  // K = 5 16-blocks: the last 32-block of a W32 row is half padding
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> W(static_cast<size_t>(N * K)), X(static_cast<size_t>(M * K));
  for (float& w : W) w = 0.05f * nd(rng);
  for (float& x : X) x = nd(rng);
  auto run = [&](const Linear& l) {
    std::vector<float> y(static_cast<size_t>(M * N));
    l.forward(X.data(), M, y.data());
    return y;
  };
  const int64_t nb = (K + 15) / 16;
  // the stored layout of a quantized checkpoint: codes [N, nb * 8] then scales [N, nb], one byte off alignment
  auto stored = [&](auto block_of) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(1 + N * nb * 9));
    uint8_t* codes = bytes->data() + 1;
    uint8_t* scales = codes + N * nb * 8;
    for (int64_t r = 0; r < N; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const block_nvfp4_16 blk = block_of(r, b);
        scales[r * nb + b] = blk.s.e;
        std::memcpy(codes + (r * nb + b) * 8, blk.qs, 8);
      }
    return bytes;
  };
  {  // NVFP4-16: nvfp4, w4a16, sharq:w16
    const auto q = quantize_matrix<Nvfp4_16>(W.data(), N, K, GlobalScale::per_tensor);
    auto bytes = stored([&](int64_t r, int64_t b) { return q.row(r)[b]; });
    for (const char* name : {"nvfp4", "w4a16", "sharq:w16"}) {
      const Scheme s = parse_scheme(name);
      const auto want = run(*Linear::create(s, q));
      const auto got = run(*Linear::create_stored_nvfp4(s, N, K, bytes->data() + 1, bytes->data() + 1 + N * nb * 8, q.g[0], bytes));
      EXPECT_TRUE(sharq_test::bit_equal(want, got)) << name;
    }
  }
  {  // sharq's W32 payload written as its 16-element view: runs sharq (W32) and nvfp4 the same way
    const auto q = quantize_matrix<Nvfp4_32>(W.data(), N, K, GlobalScale::per_tensor);
    std::shared_ptr<std::vector<uint8_t>> bytes = stored([&](int64_t r, int64_t b) { return nvfp4_16_view(q, r, b); });
    const uint8_t* codes = bytes->data() + 1;
    const uint8_t* scales = codes + N * nb * 8;
    const auto want = run(*Linear::create(parse_scheme("sharq"), q));
    std::unique_ptr<Linear> layer = Linear::create_stored_nvfp4(parse_scheme("sharq"), N, K, codes, scales, q.g[0], bytes);
    bytes.reset();  // the layer keeps the bytes alive
    EXPECT_TRUE(sharq_test::bit_equal(want, run(*layer)));
    EXPECT_THROW(Linear::create_stored_nvfp4(parse_scheme("fp8"), N, K, codes, scales, 1.0f, nullptr), std::invalid_argument);
  }
  // BF16 / FP16 bits under fp32: what create(fp32) computes on the widened values
  for (const bool bf16 : {true, false}) {
    auto bytes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(1 + N * K * 2));
    std::vector<float> widened(W.size());
    for (size_t i = 0; i < W.size(); ++i) {
      const uint16_t h = bf16 ? bf16_encode(W[i]) : fp16_encode(W[i]);
      std::memcpy(bytes->data() + 1 + 2 * i, &h, 2);
      widened[i] = bf16 ? bf16_decode(h) : fp16_decode(h);
    }
    const auto want = run(*Linear::create(Scheme{}, widened.data(), N, K));
    const auto got = run(*Linear::create_fp32_on_16bit(N, K, bytes->data() + 1, bf16, bytes));
    EXPECT_TRUE(sharq_test::bit_equal(want, got)) << (bf16 ? "bf16" : "fp16");
  }
}

}  // namespace
}  // namespace sharq
