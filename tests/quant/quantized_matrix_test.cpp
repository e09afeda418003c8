// Whole-matrix quantization tests (src/sharq/quant/quantized_matrix.h/.cpp): shapes and zero
// padding along K, the NVFP4 FP32 second-level scale (per tensor / per row), non-finite blocks,
// empty matrices. Block contents are compared with the reference quantizers of
// tests/support/reference_quant.h applied to explicitly padded, explicitly scaled slices.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../support/reference_quant.h"
#include "sharq/quant/quantized_matrix.h"

namespace {

using sharq::GlobalScale;
using sharq_test::RefBlock;

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class F>
struct Fmt;
template <int B>
struct Fmt<sharq::Nvfp4<B>> {
  static constexpr const char* kId = B == 16 ? "Nvfp4_16" : "Nvfp4_32";
  static constexpr bool kHasGlobal = true;
  static constexpr uint8_t kNanScale = 0x7F;
  static RefBlock ref(const float* v) { return sharq_test::ref_nvfp4(v, B); }
  static uint32_t scale_fields(const typename sharq::Nvfp4<B>::block_t& b) { return b.s.e; }
};
template <>
struct Fmt<sharq::Mxfp4> {
  static constexpr const char* kId = "Mxfp4";
  static constexpr bool kHasGlobal = false;
  static constexpr uint8_t kNanScale = 0xFF;
  static RefBlock ref(const float* v) { return sharq_test::ref_mxfp4(v); }
  static uint32_t scale_fields(const sharq::Mxfp4::block_t& b) { return b.s.e; }
};
template <>
struct Fmt<sharq::Hif4> {
  static constexpr const char* kId = "Hif4";
  static constexpr bool kHasGlobal = false;
  static constexpr uint8_t kNanScale = 0xFF;
  static RefBlock ref(const float* v) { return sharq_test::ref_hif4(v); }
  // sf | e8 << 8 | e16 << 16 (the reference's packing)
  static uint32_t scale_fields(const sharq::Hif4::block_t& b) {
    return b.s.sf | (b.s.e8 << 8) | (static_cast<uint32_t>(b.s.e16[0] | (b.s.e16[1] << 8)) << 16);
  }
};
uint32_t ref_scale_fields(const RefBlock& r) { return r.scale | (r.e8 << 8) | (static_cast<uint32_t>(r.e16) << 16); }

template <class Block>
uint8_t code_at(const Block& b, int k) {
  const uint8_t byte = b.qs[k / 2];
  return static_cast<uint8_t>(k % 2 == 0 ? (byte & 0x0F) : (byte >> 4));
}

template <class F>
std::vector<GlobalScale> modes() {
  if constexpr (Fmt<F>::kHasGlobal) return {GlobalScale::none, GlobalScale::per_tensor, GlobalScale::per_row};
  else return {GlobalScale::none};
}
const char* mode_name(GlobalScale m) {
  return m == GlobalScale::none ? "none" : (m == GlobalScale::per_tensor ? "per_tensor" : "per_row");
}

// rows x cols, Gaussian or heavy-tailed, each row scaled by its own power of two (2^-6 .. 2^6) so
// that per-row and per-tensor scales differ.
std::vector<float> random_matrix(int64_t rows, int64_t cols, uint64_t seed, bool heavy) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::student_t_distribution<float> student(2.0f);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float mul = std::ldexp(1.0f, static_cast<int>(r % 13) - 6);
    for (int64_t c = 0; c < cols; ++c) x[r * cols + c] = (heavy ? student(rng) : gauss(rng)) * mul;
  }
  return x;
}

// The spec's second-level scale, computed here: g = max finite |T| / 2688, clamped to >= 1e-9.
float spec_g(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(x[i])) m = std::max(m, std::fabs(x[i]));
  return std::max(m / 2688.0f, 1e-9f);
}
std::vector<float> spec_gs(const std::vector<float>& x, int64_t rows, int64_t cols, GlobalScale mode) {
  if (mode == GlobalScale::none) return {};
  if (mode == GlobalScale::per_tensor) return {spec_g(x.data(), rows * cols)};
  std::vector<float> g;
  for (int64_t r = 0; r < rows; ++r) g.push_back(spec_g(x.data() + r * cols, cols));
  return g;
}

bool same_bits_or_nan(float a, float b) {
  if (std::isnan(a)) return std::isnan(b);
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

// Checks q against the reference: g, every block's scale fields and codes, both dequantizations.
template <class F>
void expect_matrix_matches_reference(const std::vector<float>& x, int64_t rows, int64_t cols, GlobalScale mode) {
  SCOPED_TRACE(std::string(Fmt<F>::kId) + " " + mode_name(mode) + " " + std::to_string(rows) + "x" + std::to_string(cols));
  const int B = F::kBlock;
  const sharq::QuantizedMatrix<F> q = sharq::quantize_matrix<F>(x.data(), rows, cols, mode);
  const std::vector<float> g = spec_gs(x, rows, cols, mode);
  ASSERT_EQ(q.g.size(), g.size());
  for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(same_bits_or_nan(q.g[i], g[i])) << "g[" << i << "] " << q.g[i] << " vs " << g[i];
  ASSERT_EQ(q.blocks_per_row, (cols + B - 1) / B);
  ASSERT_EQ(q.blocks.size(), static_cast<size_t>(rows * q.blocks_per_row));
  const std::vector<float> d0 = sharq::dequantize_matrix(q, false), d1 = sharq::dequantize_matrix(q, true);
  ASSERT_EQ(d0.size(), static_cast<size_t>(rows * cols));
  ASSERT_EQ(d1.size(), static_cast<size_t>(rows * cols));
  int bad = 0;
  std::vector<float> buf(B);
  for (int64_t r = 0; r < rows; ++r) {
    const float gr = g.empty() ? 1.0f : (g.size() == 1 ? g[0] : g[r]);
    EXPECT_EQ(q.global(r), gr);
    for (int64_t bi = 0; bi < q.blocks_per_row; ++bi) {
      for (int k = 0; k < B; ++k) {
        const int64_t c = bi * B + k;
        buf[k] = c < cols ? x[r * cols + c] / gr : 0.0f;  // spec: quantize T/g in FP32, zero-pad along K
      }
      const RefBlock ref = Fmt<F>::ref(buf.data());
      const auto& blk = q.row(r)[bi];
      bool ok = Fmt<F>::scale_fields(blk) == ref_scale_fields(ref);
      for (int k = 0; k < B; ++k) {
        ok = ok && code_at(blk, k) == ref.codes[k];
        const int64_t c = bi * B + k;
        if (c >= cols) continue;
        ok = ok && same_bits_or_nan(d0[r * cols + c], static_cast<float>(ref.deq[k]));
        // with_global multiplies g back in, in FP32
        ok = ok && same_bits_or_nan(d1[r * cols + c], mode == GlobalScale::none ? d0[r * cols + c] : d0[r * cols + c] * gr);
      }
      if (!ok && ++bad <= 5) ADD_FAILURE() << "row " << r << " block " << bi << " differs from the reference";
    }
  }
  EXPECT_EQ(bad, 0);
}

template <class F>
class QuantMatrix : public ::testing::Test {};
using Formats = ::testing::Types<sharq::Nvfp4_16, sharq::Nvfp4_32, sharq::Mxfp4, sharq::Hif4>;
struct FormatNames {
  template <class F>
  static std::string GetName(int) { return Fmt<F>::kId; }
};
TYPED_TEST_SUITE(QuantMatrix, Formats, FormatNames);

// =====================================================================================================
TYPED_TEST(QuantMatrix, ShapesBlocksAndBytes) {
  using F = TypeParam;
  for (int64_t rows : {0, 1, 3}) {
    for (int64_t cols : {0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000}) {
      const std::vector<float> x = random_matrix(rows, cols, 11, false);
      for (GlobalScale m : modes<F>()) {
        const auto q = sharq::quantize_matrix<F>(x.data(), rows, cols, m);
        const int64_t bpr = (cols + F::kBlock - 1) / F::kBlock;
        EXPECT_EQ(q.rows, rows);
        EXPECT_EQ(q.cols, cols);
        EXPECT_EQ(q.blocks_per_row, bpr);
        EXPECT_EQ(q.blocks.size(), static_cast<size_t>(rows * bpr));
        EXPECT_EQ(q.gmode, m);
        const size_t ng = m == GlobalScale::none ? 0 : (m == GlobalScale::per_tensor ? 1 : static_cast<size_t>(rows));
        EXPECT_EQ(q.g.size(), ng);
        EXPECT_EQ(q.bytes(), q.blocks.size() * sizeof(typename F::block_t) + ng * sizeof(float));
        EXPECT_EQ(sharq::dequantize_matrix(q, true).size(), static_cast<size_t>(rows * cols));
        for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(q.row(r), q.blocks.data() + r * bpr);
      }
    }
  }
}

TYPED_TEST(QuantMatrix, MatchesReferenceGaussian) {
  using F = TypeParam;
  const std::vector<float> x = random_matrix(9, 203, 21, false);  // 203: no block size divides it
  for (GlobalScale m : modes<F>()) expect_matrix_matches_reference<F>(x, 9, 203, m);
}

TYPED_TEST(QuantMatrix, MatchesReferenceHeavyTailed) {
  using F = TypeParam;
  const std::vector<float> x = random_matrix(13, 256, 22, true);
  for (GlobalScale m : modes<F>()) expect_matrix_matches_reference<F>(x, 13, 256, m);
}

TYPED_TEST(QuantMatrix, MatchesReferenceOnTheParallelPath) {
  // rows * cols > 2^16 takes the OpenMP loop.
  using F = TypeParam;
  const std::vector<float> x = random_matrix(300, 333, 23, true);
  for (GlobalScale m : modes<F>()) expect_matrix_matches_reference<F>(x, 300, 333, m);
}

TYPED_TEST(QuantMatrix, RaggedKEqualsExplicitZeroPadding) {
  using F = TypeParam;
  const int B = F::kBlock;
  for (int64_t K : {int64_t{1}, int64_t{B - 1}, int64_t{B + 1}, int64_t{3 * B + 5}, int64_t{7 * B - 2}}) {
    const int64_t rows = 6, Kp = (K + B - 1) / B * B;
    const std::vector<float> x = random_matrix(rows, K, 30 + static_cast<uint64_t>(K), true);
    std::vector<float> xp(static_cast<size_t>(rows * Kp), 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < K; ++c) xp[r * Kp + c] = x[r * K + c];
    for (GlobalScale m : modes<F>()) {
      SCOPED_TRACE(std::string(mode_name(m)) + " K=" + std::to_string(K));
      const auto q = sharq::quantize_matrix<F>(x.data(), rows, K, m);
      const auto qp = sharq::quantize_matrix<F>(xp.data(), rows, Kp, m);
      ASSERT_EQ(q.g, qp.g);
      ASSERT_EQ(q.blocks.size(), qp.blocks.size());
      EXPECT_EQ(std::memcmp(q.blocks.data(), qp.blocks.data(), q.blocks.size() * sizeof(typename F::block_t)), 0)
          << "blocks differ from explicitly zero-padded ones";
      const std::vector<float> d = sharq::dequantize_matrix(q, true), dp = sharq::dequantize_matrix(qp, true);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < K; ++c) ASSERT_EQ(d[r * K + c], dp[r * Kp + c]) << r << "," << c;
        for (int64_t c = K; c < Kp; ++c) ASSERT_EQ(dp[r * Kp + c], 0.0f) << "padded position " << r << "," << c;
        // The stored tail block itself decodes to 0 in the padding.
        std::vector<float> tail(B);
        sharq::dequantize_block<F>(q.row(r)[q.blocks_per_row - 1], tail.data());
        for (int64_t k = K - (q.blocks_per_row - 1) * B; k < B; ++k) {
          ASSERT_EQ(tail[k], 0.0f) << "row " << r << " tail element " << k;
          ASSERT_EQ(code_at(q.row(r)[q.blocks_per_row - 1], static_cast<int>(k)), 0);
        }
      }
    }
  }
}

TYPED_TEST(QuantMatrix, NonFiniteBlocksArePoisonedAndOthersUntouched) {
  using F = TypeParam;
  const int B = F::kBlock;
  const int64_t rows = 5, cols = 3 * B + 7;
  const std::vector<float> x = random_matrix(rows, cols, 40, false);
  struct Hit { int64_t r, c; float v; };
  const Hit hits[] = {{1, 1, kNaN}, {2, B + 3, kInf}, {2, B + 4, -kNaN}, {3, cols - 1, -kInf}, {4, 2 * B, kInf}};
  std::vector<float> xn = x, xz = x;
  for (const Hit& h : hits) {
    xn[h.r * cols + h.c] = h.v;
    xz[h.r * cols + h.c] = 0.0f;  // same finite content otherwise: same g
  }
  auto poisoned = [&](int64_t r, int64_t bi) {
    for (const Hit& h : hits)
      if (h.r == r && h.c / B == bi) return true;
    return false;
  };
  for (GlobalScale m : modes<F>()) {
    SCOPED_TRACE(mode_name(m));
    const auto qn = sharq::quantize_matrix<F>(xn.data(), rows, cols, m);
    const auto qz = sharq::quantize_matrix<F>(xz.data(), rows, cols, m);
    // The second-level scale ignores NaN/Inf (max over finite values).
    EXPECT_EQ(qn.g, qz.g);
    for (float gv : qn.g) EXPECT_TRUE(std::isfinite(gv));
    const std::vector<float> dn = sharq::dequantize_matrix(qn, true), dz = sharq::dequantize_matrix(qz, true);
    int npoisoned = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t bi = 0; bi < qn.blocks_per_row; ++bi) {
        const auto& bn = qn.row(r)[bi];
        const auto& bz = qz.row(r)[bi];
        if (poisoned(r, bi)) {
          ++npoisoned;
          EXPECT_EQ(Fmt<F>::scale_fields(bn), Fmt<F>::kNanScale) << r << "," << bi;
          for (int k = 0; k < B / 2; ++k) EXPECT_EQ(bn.qs[k], 0);
          for (int64_t c = bi * B; c < std::min<int64_t>(cols, (bi + 1) * B); ++c)
            EXPECT_TRUE(std::isnan(dn[r * cols + c])) << r << "," << c;
        } else {
          EXPECT_EQ(std::memcmp(&bn, &bz, sizeof bn), 0) << "block " << r << "," << bi << " changed";
          for (int64_t c = bi * B; c < std::min<int64_t>(cols, (bi + 1) * B); ++c) {
            EXPECT_FALSE(std::isnan(dn[r * cols + c]));
            EXPECT_EQ(dn[r * cols + c], dz[r * cols + c]);
          }
        }
      }
    }
    EXPECT_EQ(npoisoned, 4);  // hits 1 and 2 share a block
  }
}

TYPED_TEST(QuantMatrix, EmptyMatrices) {
  using F = TypeParam;
  for (GlobalScale m : modes<F>()) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{0, 0}, {0, 17}, {5, 0}}) {
      SCOPED_TRACE(std::string(mode_name(m)) + " " + std::to_string(rows) + "x" + std::to_string(cols));
      const std::vector<float> x;  // no data at all
      const auto q = sharq::quantize_matrix<F>(x.data(), rows, cols, m);
      EXPECT_EQ(q.rows, rows);
      EXPECT_EQ(q.cols, cols);
      EXPECT_TRUE(q.blocks.empty());
      EXPECT_TRUE(sharq::dequantize_matrix(q, true).empty());
      EXPECT_TRUE(sharq::dequantize_matrix(q, false).empty());
      if (m == GlobalScale::none) {
        EXPECT_TRUE(q.g.empty());
      } else if (m == GlobalScale::per_tensor) {
        ASSERT_EQ(q.g.size(), 1u);
        EXPECT_EQ(q.g[0], 1e-9f);  // max over nothing = 0, clamped
      } else {
        ASSERT_EQ(q.g.size(), static_cast<size_t>(rows));
        for (float gv : q.g) EXPECT_EQ(gv, 1e-9f);
      }
    }
  }
}

TYPED_TEST(QuantMatrix, InvalidShapesThrow) {
  using F = TypeParam;
  const float x[4] = {};
  EXPECT_THROW(sharq::quantize_matrix<F>(x, -1, 4, GlobalScale::none), std::invalid_argument);
  EXPECT_THROW(sharq::quantize_matrix<F>(x, 1, -4, GlobalScale::none), std::invalid_argument);
  EXPECT_THROW(sharq::quantize_matrix<F>(x, int64_t{1} << 31, 0, GlobalScale::none), std::invalid_argument);
  EXPECT_NO_THROW(sharq::check_shape("t", 0, 0));
  EXPECT_NO_THROW(sharq::check_shape("t", (int64_t{1} << 31) - 1, 0));
}

TYPED_TEST(QuantMatrix, SecondLevelScaleOnlyForNvfp4) {
  using F = TypeParam;
  const float x[64] = {1.0f};
  for (GlobalScale g : {GlobalScale::per_tensor, GlobalScale::per_row}) {
    if constexpr (F::kHasGlobal) {
      EXPECT_NO_THROW(sharq::quantize_matrix<F>(x, 1, 64, g));
    } else {
      EXPECT_THROW(sharq::quantize_matrix<F>(x, 1, 64, g), std::invalid_argument);
    }
  }
}

// =====================================================================================================
// NVFP4 second-level scale
TEST(Nvfp4GlobalScale, HandCheckedValues) {
  // Row 0: max 5376 -> g = 2; row 1: max 336 (plus NaN/Inf, ignored) -> g = 0.125;
  // row 2: all zero -> 1e-9; row 3: max 1e-7 -> 3.7e-11 -> clamped to 1e-9.
  const float x[4 * 4] = {1.0f,  -5376.0f, 3.0f, 0.0f,   //
                          kNaN,  -336.0f,  kInf, -kInf,  //
                          0.0f,  -0.0f,    0.0f, 0.0f,   //
                          1e-7f, 0.0f,     0.0f, -5e-8f};
  const std::vector<float> pr = sharq::nvfp4_global_scales(x, 4, 4, GlobalScale::per_row);
  ASSERT_EQ(pr.size(), 4u);
  EXPECT_EQ(pr[0], 2.0f);
  EXPECT_EQ(pr[1], 0.125f);
  EXPECT_EQ(pr[2], 1e-9f);
  EXPECT_EQ(pr[3], 1e-9f);
  const std::vector<float> pt = sharq::nvfp4_global_scales(x, 4, 4, GlobalScale::per_tensor);
  ASSERT_EQ(pt.size(), 1u);
  EXPECT_EQ(pt[0], 2.0f);
  EXPECT_TRUE(sharq::nvfp4_global_scales(x, 4, 4, GlobalScale::none).empty());
  EXPECT_EQ(sharq::kNvfp4GlobalDiv, 2688.0f);
  EXPECT_EQ(sharq::nvfp4_global_scale(2688.0f), 1.0f);
  EXPECT_EQ(sharq::nvfp4_global_scale(0.0f), 1e-9f);
  EXPECT_EQ(sharq::nvfp4_global_scale(2688e-6f), 2688e-6f / 2688.0f);  // above the clamp: unchanged
  EXPECT_EQ(sharq::nvfp4_global_scale(2e-6f), 1e-9f);
  // A row of NaNs only: no finite value, g = 1e-9.
  const float nans[3] = {kNaN, kNaN, -kInf};
  EXPECT_EQ(sharq::nvfp4_global_scales(nans, 1, 3, GlobalScale::per_row)[0], 1e-9f);
}

TEST(Nvfp4GlobalScale, BlocksQuantizeXDividedByGInFp32) {
  // g = 40320 / 2688 = 15. Block 1 holds 90, 18.75, 37.5, 75: divided by 15 that is exactly 6,
  // 1.25, 2.5, 5, i.e. three E2M1 ties with scale s = UE4M3(6/6) = 1, which round to even:
  // 1.25 -> 1, 2.5 -> 2, 5 -> 4. (Multiplying by a rounded 1/15 instead would land just above
  // each tie, giving 1.5, 3 and 6.)
  std::vector<float> x(32, 0.0f);
  x[0] = 40320.0f;
  x[16] = 90.0f; x[17] = 18.75f; x[18] = 37.5f; x[19] = -75.0f;
  for (GlobalScale mode : {GlobalScale::per_tensor, GlobalScale::per_row}) {
    const auto q = sharq::quantize_matrix<sharq::Nvfp4_16>(x.data(), 1, 32, mode);
    ASSERT_EQ(q.g.size(), 1u);
    EXPECT_EQ(q.g[0], 15.0f);
    EXPECT_EQ(q.row(0)[0].s.e, 0x7E);  // 2688 / 6 = 448
    EXPECT_EQ(q.row(0)[1].s.e, 0x38);  // 1.0
    EXPECT_EQ(code_at(q.row(0)[1], 0), 0x7);
    EXPECT_EQ(code_at(q.row(0)[1], 1), 0x2);
    EXPECT_EQ(code_at(q.row(0)[1], 2), 0x4);
    EXPECT_EQ(code_at(q.row(0)[1], 3), 0xE);
    const std::vector<float> d = sharq::dequantize_matrix(q, true);
    EXPECT_EQ(d[0], 40320.0f);
    EXPECT_EQ(d[16], 90.0f);
    EXPECT_EQ(d[17], 15.0f);
    EXPECT_EQ(d[18], 30.0f);
    EXPECT_EQ(d[19], -60.0f);
  }
}

TEST(Nvfp4GlobalScale, PerTensorIsTheMaxOfPerRow) {
  const std::vector<float> x = random_matrix(29, 77, 50, true);
  const auto pr = sharq::nvfp4_global_scales(x.data(), 29, 77, GlobalScale::per_row);
  const auto pt = sharq::nvfp4_global_scales(x.data(), 29, 77, GlobalScale::per_tensor);
  ASSERT_EQ(pt.size(), 1u);
  EXPECT_EQ(pt[0], *std::max_element(pr.begin(), pr.end()));
  EXPECT_EQ(pt[0], spec_g(x.data(), 29 * 77));
  for (int r = 0; r < 29; ++r) EXPECT_EQ(pr[r], spec_g(x.data() + r * 77, 77)) << r;
}

template <class F>
void global_max_maps_to_448(GlobalScale mode) {
  // With g = amax/2688 the block holding amax gets scale 448 (code 0x7E) and amax comes back as
  // +-6 * 448 * g = amax up to the FP32 rounding of amax/2688 (relative 2^-23 or so).
  const int64_t rows = 11, cols = 150;
  const std::vector<float> x = random_matrix(rows, cols, 60, true);
  const auto q = sharq::quantize_matrix<F>(x.data(), rows, cols, mode);
  const std::vector<float> d = sharq::dequantize_matrix(q, true);
  auto check_at = [&](int64_t r, int64_t c) {
    EXPECT_EQ(q.row(r)[c / F::kBlock].s.e, 0x7E) << r << "," << c;
    EXPECT_EQ(code_at(q.row(r)[c / F::kBlock], static_cast<int>(c % F::kBlock)), x[r * cols + c] > 0 ? 0x7 : 0xF);
    EXPECT_NEAR(d[r * cols + c], x[r * cols + c], std::fabs(x[r * cols + c]) * 1e-6);
  };
  if (mode == GlobalScale::per_row) {
    for (int64_t r = 0; r < rows; ++r) {
      int64_t best = 0;
      for (int64_t c = 1; c < cols; ++c)
        if (std::fabs(x[r * cols + c]) > std::fabs(x[r * cols + best])) best = c;
      check_at(r, best);
    }
  } else {
    int64_t best = 0;
    for (int64_t i = 1; i < rows * cols; ++i)
      if (std::fabs(x[i]) > std::fabs(x[best])) best = i;
    check_at(best / cols, best % cols);
  }
  // No block scale saturates beyond 448 and no value clips beyond 2688 in the scaled domain.
  const std::vector<float> d0 = sharq::dequantize_matrix(q, false);
  for (float v : d0) EXPECT_LE(std::fabs(v), 2688.0f);
}
TEST(Nvfp4GlobalScale, RowMaxMapsToTheTopOfTheRange16) { global_max_maps_to_448<sharq::Nvfp4_16>(GlobalScale::per_row); }
TEST(Nvfp4GlobalScale, RowMaxMapsToTheTopOfTheRange32) { global_max_maps_to_448<sharq::Nvfp4_32>(GlobalScale::per_row); }
TEST(Nvfp4GlobalScale, TensorMaxMapsToTheTopOfTheRange16) { global_max_maps_to_448<sharq::Nvfp4_16>(GlobalScale::per_tensor); }

TEST(Nvfp4GlobalScale, RealDomainErrorBound) {
  // For an element in a block with a normal UE4M3 scale s (scaled domain): |x/g - q s| <= s
  // (half the widest E2M1 gap is s; clipping costs at most 0.375 s, see block_quant_test). Back
  // in the real domain, with the two FP32 roundings of x/g and (q s) g:
  //   |x - deq| <= g s + 2^-22 |x|.
  for (GlobalScale mode : {GlobalScale::per_tensor, GlobalScale::per_row}) {
    for (bool heavy : {false, true}) {
      const int64_t rows = 17, cols = 200;
      const std::vector<float> x = random_matrix(rows, cols, 70 + heavy, heavy);
      const auto q = sharq::quantize_matrix<sharq::Nvfp4_16>(x.data(), rows, cols, mode);
      const std::vector<float> d = sharq::dequantize_matrix(q, true);
      long checked = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const double s = sharq::ue4m3_decode(q.row(r)[c / 16].s.e);
          if (s < std::ldexp(1.0, -6)) continue;  // subnormal scale: bound differs (rare here)
          ++checked;
          const double xv = x[r * cols + c], err = std::fabs(d[r * cols + c] - xv);
          ASSERT_LE(err, q.global(r) * s + std::ldexp(std::fabs(xv), -22)) << mode_name(mode) << " " << r << "," << c;
        }
      }
      EXPECT_GT(checked, rows * cols * 9 / 10);
    }
  }
}

TEST(Nvfp4GlobalScale, PerRowIsBatchInvariantPerTensorIsNot) {
  const int64_t rows = 8, cols = 96;
  std::vector<float> x = random_matrix(rows, cols, 80, false);
  x[5 * cols + 7] = 1000.0f;  // row 5 dominates the tensor max
  for (int64_t r = 0; r < rows; ++r) {
    const auto whole = sharq::quantize_matrix<sharq::Nvfp4_16>(x.data(), rows, cols, GlobalScale::per_row);
    const auto alone = sharq::quantize_matrix<sharq::Nvfp4_16>(x.data() + r * cols, 1, cols, GlobalScale::per_row);
    EXPECT_EQ(whole.g[r], alone.g[0]) << r;
    EXPECT_EQ(std::memcmp(whole.row(r), alone.row(0), whole.blocks_per_row * sizeof(sharq::block_nvfp4_16)), 0) << r;
  }
  // Per tensor, row 0's blocks depend on row 5.
  const auto whole = sharq::quantize_matrix<sharq::Nvfp4_16>(x.data(), rows, cols, GlobalScale::per_tensor);
  const auto alone = sharq::quantize_matrix<sharq::Nvfp4_16>(x.data(), 1, cols, GlobalScale::per_tensor);
  EXPECT_NE(whole.g[0], alone.g[0]);
  EXPECT_EQ(whole.g[0], 1000.0f / 2688.0f);
  EXPECT_NE(std::memcmp(whole.row(0), alone.row(0), whole.blocks_per_row * sizeof(sharq::block_nvfp4_16)), 0);
}

}  // namespace
