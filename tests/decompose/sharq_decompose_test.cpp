// The SharQ decomposition (SHARQ_SPEC "The SharQ decomposition"):
//  - the packed path (sharq_prepare + sharq_dequantize_row) equals the dense reference
//    (sharq_decompose_dense) bit for bit, for every format x mask x second-level-scale mode;
//  - the dense reference follows the spec step by step, checked against test-side quantizers and
//    masks written from the spec (value tables + nearest search, no code shared with src/);
//  - the properties the method relies on: exact N:M masks, the residual bound, lower error than
//    plain NVFP4 on outlier-heavy input, the packed block layout, the W32 shared weight view,
//    non-finite containment and empty shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "sharq/decompose/sharq_decompose.h"
#include "../support/bit_compare.h"
#include "../support/test_inputs.h"

namespace sharq {
namespace {

using sharq_test::outlier_heavy;
using sharq_test::Rng;
using sharq_test::bit_equal;
using sharq_test::float_bits;
using sharq_test::hex;
using sharq_test::same_bits;

// ================================================================================================
// Utilities

// Value equality (+0 == -0), NaN == NaN: for comparisons against test-side references, which do
// not model the sign of a zero.
bool same_value(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }




// Inputs that stress the edge cases: ties (small integers and zeros: mask ties, E2M1 ties), tiny
// values (subnormal UE4M3 scales, the 1e-9 clamp of g), rows of very different magnitude and an
// all-zero row.
std::vector<float> edge_inputs(int64_t M, int64_t K, uint64_t seed, int kind) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      float& v = x[m * K + k];
      switch (kind) {
        case 0: v = static_cast<float>(rng.index(5) - 2) * (rng.index(3) == 0 ? 0.0f : 1.0f); break;
        case 1: v = static_cast<float>(rng.normal() * 1e-8); break;
        case 2: v = static_cast<float>(rng.normal() * std::pow(10.0, static_cast<double>(m % 7) - 3.0)); break;
        default: v = m == 0 ? 0.0f : static_cast<float>(rng.normal()); break;
      }
    }
  return x;
}

struct Shape { int64_t M, K; };
// M = 1 included, and K that is not a multiple of 64 (or even of 4).
const Shape kShapes[] = {{1, 40}, {1, 100}, {3, 200}, {2, 64}, {5, 16}, {4, 7}, {2, 129}, {3, 300}};

// ================================================================================================
// Test-side reference codecs and quantizers, written from the spec: each format is its table of
// representable magnitudes; rounding picks the nearest one, ties to the even code (= RNE on the
// mantissa, since every format's mantissa LSB is its code LSB), saturating at both ends.

struct Grid {
  std::vector<double> mag;  // ascending; index == code
  double round(double a) const {
    if (a >= mag.back()) return mag.back();
    if (a <= mag.front()) return mag.front();
    const size_t hi = static_cast<size_t>(std::upper_bound(mag.begin(), mag.end(), a) - mag.begin());
    const size_t lo = hi - 1;
    const double dlo = a - mag[lo], dhi = mag[hi] - a;
    if (dlo != dhi) return dlo < dhi ? mag[lo] : mag[hi];
    return lo % 2 == 0 ? mag[lo] : mag[hi];
  }
};
const Grid& e2m1() {
  static const Grid g{{0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}};
  return g;
}
const Grid& ue4m3() {  // codes 0..0x7E (0x7F is NaN): e = 0 subnormal m/8 2^-6, else 2^(e-7)(1+m/8)
  static const Grid g = [] {
    Grid r;
    for (int c = 0; c <= 0x7E; ++c) {
      const int e = c >> 3, m = c & 7;
      r.mag.push_back(e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7));
    }
    return r;
  }();
  return g;
}
const Grid& s1p2() {
  static const Grid g{{0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75}};
  return g;
}
const Grid& e6m2() {  // codes 0..0xFE: 2^(e-48)(1+m/4); no zero, so everything below 2^-48 -> 2^-48
  static const Grid g = [] {
    Grid r;
    for (int c = 0; c <= 0xFE; ++c) r.mag.push_back(std::ldexp(1.0 + (c & 3) / 4.0, (c >> 2) - 48));
    return r;
  }();
  return g;
}

float amax_of(const float* v, int n) {
  float m = 0.0f;
  for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(v[i]));
  return m;
}
// sign(v) * q * s with the product in double (exact for these formats), returned as float.
float signed_product(float v, double q, double s) { return static_cast<float>((v < 0 ? -q : q) * s); }

// NVFP4-B: s = UE4M3(amax / 6); q = E2M1(v / s); zero block -> 0. FP32 divisions, as the spec.
void ref_nvfp4_block(const float* v, int B, float* out, double* scale = nullptr) {
  const double s = ue4m3().round(amax_of(v, B) / 6.0f);
  if (scale) *scale = s;
  for (int k = 0; k < B; ++k)
    out[k] = s == 0.0 ? 0.0f : signed_product(v[k], e2m1().round(std::fabs(v[k] / static_cast<float>(s))), s);
}
// MXFP4-32: scale 2^(floor(log2 amax) - 2) clamped to UE8M0's [-127, 127]; q = E2M1(v / scale).
void ref_mxfp4_block(const float* v, float* out) {
  const float amax = amax_of(v, 32);
  if (amax == 0.0f) {
    std::fill(out, out + 32, 0.0f);
    return;
  }
  int e2;
  std::frexp(static_cast<double>(amax), &e2);  // amax = f 2^e2, f in [0.5, 1): floor(log2) = e2 - 1
  const int e = std::clamp(e2 - 1 - 2, -127, 127);
  const float s = std::ldexp(1.0f, e);
  for (int k = 0; k < 32; ++k) out[k] = signed_product(v[k], e2m1().round(std::fabs(v[k] / s)), s);
}
// HiF4-64, the spec's six steps.
void ref_hif4_block(const float* v, float* out) {
  const float sf = static_cast<float>(e6m2().round(amax_of(v, 64) / 7.0f));
  int e8[8], e16[16];
  for (int j = 0; j < 8; ++j) e8[j] = amax_of(v + 8 * j, 8) / sf >= 4.0f;
  for (int i = 0; i < 16; ++i) e16[i] = amax_of(v + 4 * i, 4) / (sf * static_cast<float>(1 << e8[i / 2])) >= 2.0f;
  for (int k = 0; k < 64; ++k) {
    const float s = sf * static_cast<float>(1 << (e8[k / 8] + e16[k / 4]));
    out[k] = signed_product(v[k], s1p2().round(std::fabs(v[k] / s)), s);
  }
}

template <class F> void ref_block(const float* v, float* out);
template <> void ref_block<Nvfp4_16>(const float* v, float* out) { ref_nvfp4_block(v, 16, out); }
template <> void ref_block<Nvfp4_32>(const float* v, float* out) { ref_nvfp4_block(v, 32, out); }
template <> void ref_block<Mxfp4>(const float* v, float* out) { ref_mxfp4_block(v, out); }
template <> void ref_block<Hif4>(const float* v, float* out) { ref_hif4_block(v, out); }

// dequant(F(row)), K zero-padded to the block.
template <class F>
std::vector<float> ref_quant_row(const float* x, int64_t K) {
  constexpr int B = F::kBlock;
  std::vector<float> out(static_cast<size_t>(K));
  float in[B], q[B];
  for (int64_t b = 0; b * B < K; ++b) {
    for (int k = 0; k < B; ++k) in[k] = b * B + k < K ? x[b * B + k] : 0.0f;
    ref_block<F>(in, q);
    for (int k = 0; k < B && b * B + k < K; ++k) out[b * B + k] = q[k];
  }
  return out;
}

// The spec's masks: pair-4:8 (2 best pairs of each aligned 8, score of the pair) or scalar 2:4
// (2 largest |v| of each aligned 4); ties to the lower index; K zero-padded to the group.
std::vector<uint8_t> ref_mask(const float* v, int64_t K, MaskKind kind, PairScore score) {
  const int G = kind == MaskKind::pair48 ? 8 : 4, unit = G / 4;
  std::vector<uint8_t> keep(static_cast<size_t>(K), 0);
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    float u[8];
    for (int i = 0; i < G; ++i) u[i] = g0 + i < K ? std::fabs(v[g0 + i]) : 0.0f;
    float sc[4];
    for (int p = 0; p < 4; ++p) {
      if (unit == 1) { sc[p] = u[p]; continue; }
      const float a = u[2 * p], b = u[2 * p + 1], hi = std::max(a, b), lo = std::min(a, b);
      switch (score) {
        case PairScore::max: sc[p] = hi; break;
        case PairScore::l1: sc[p] = a + b; break;
        case PairScore::l2sq: sc[p] = a * a + b * b; break;
        case PairScore::max_quarter_min: sc[p] = hi + 0.25f * lo; break;
      }
    }
    int order[4] = {0, 1, 2, 3};
    std::stable_sort(order, order + 4, [&](int a, int b) { return sc[a] > sc[b]; });  // ties keep lower index first
    for (int t = 0; t < 2; ++t)
      for (int i = 0; i < unit; ++i)
        if (g0 + order[t] * unit + i < K) keep[g0 + order[t] * unit + i] = 1;
  }
  return keep;
}

// g = max|T| / 2688 over the finite values of T (the whole tensor, or one row), clamped to 1e-9.
std::vector<float> ref_global(const std::vector<float>& x, int64_t M, int64_t K, GlobalScale mode) {
  auto g_of = [](float amax) { const float g = amax / 2688.0f; return g < 1e-9f ? 1e-9f : g; };
  auto amax_finite_of = [&](int64_t r0, int64_t r1) {
    float m = 0.0f;
    for (int64_t i = r0 * K; i < r1 * K; ++i)
      if (std::isfinite(x[i])) m = std::max(m, std::fabs(x[i]));
    return m;
  };
  if (mode == GlobalScale::none) return {};
  if (mode == GlobalScale::per_tensor) return {g_of(amax_finite_of(0, M))};
  std::vector<float> g;
  for (int64_t r = 0; r < M; ++r) g.push_back(g_of(amax_finite_of(r, r + 1)));
  return g;
}

// ================================================================================================
// Variant plumbing

template <class V> constexpr SharqFormat format_of();
template <> constexpr SharqFormat format_of<SharqNvfp4>() { return SharqFormat::nvfp4; }
template <> constexpr SharqFormat format_of<SharqMxfp4>() { return SharqFormat::mxfp4; }
template <> constexpr SharqFormat format_of<SharqHif4>() { return SharqFormat::hif4; }
template <class V> const char* format_name() {
  return format_of<V>() == SharqFormat::nvfp4 ? "nvfp4" : (format_of<V>() == SharqFormat::mxfp4 ? "mxfp4" : "hif4");
}
constexpr MaskKind mask_of(int G) { return G == 8 ? MaskKind::pair48 : MaskKind::scalar24; }

// Calls fn.template operator()<V, G>() for every packed variant: 3 formats x {pair48, scalar24}.
template <class Fn>
void for_each_variant(Fn&& fn) {
  fn.template operator()<SharqNvfp4, 8>();
  fn.template operator()<SharqNvfp4, 4>();
  fn.template operator()<SharqMxfp4, 8>();
  fn.template operator()<SharqMxfp4, 4>();
  fn.template operator()<SharqHif4, 8>();
  fn.template operator()<SharqHif4, 4>();
}
// Second-level scale modes of a variant: per tensor and per row for NVFP4, none otherwise.
template <class V>
std::vector<GlobalScale> gmodes() {
  if constexpr (V::kGlobal) return {GlobalScale::per_tensor, GlobalScale::per_row};
  return {GlobalScale::none};
}
const char* gname(GlobalScale g) {
  return g == GlobalScale::per_tensor ? "per_tensor" : (g == GlobalScale::per_row ? "per_row" : "none");
}

struct Packed {
  std::vector<float> xhat, s_hat, r_hat, g;
};
template <class V, int G>
Packed run_packed(const std::vector<float>& x, int64_t M, int64_t K, PairScore score, GlobalScale gm) {
  const auto a = sharq_prepare<V, G>(x.data(), M, K, score, gm);
  Packed p;
  const size_t n = static_cast<size_t>(M * K);
  p.xhat.resize(n); p.s_hat.resize(n); p.r_hat.resize(n);
  for (int64_t m = 0; m < M; ++m)
    sharq_dequantize_row<V, G>(a, m, p.xhat.data() + m * K, p.s_hat.data() + m * K, p.r_hat.data() + m * K);
  p.g = a.g;
  return p;
}

std::vector<std::vector<float>> all_inputs(int64_t M, int64_t K, uint64_t seed) {
  std::vector<std::vector<float>> xs;
  xs.push_back(outlier_heavy(M, K, seed));
  for (int kind = 0; kind < 4; ++kind) xs.push_back(edge_inputs(M, K, seed + 1 + kind, kind));
  return xs;
}

// ================================================================================================
// 1. Packed path == dense reference, bit for bit.

TEST(SharqDecompose, PackedPathEqualsDenseReferenceBitExactly) {
  int checked = 0;
  for_each_variant([&]<class V, int G>() {
    const std::vector<PairScore> scores =
        G == 8 ? std::vector<PairScore>{PairScore::max, PairScore::l1, PairScore::l2sq, PairScore::max_quarter_min}
               : std::vector<PairScore>{PairScore::max};
    for (const GlobalScale gm : gmodes<V>())
      for (const Shape sh : kShapes)
        for (const PairScore score : scores) {
          const auto inputs = all_inputs(sh.M, sh.K, 1000 + static_cast<uint64_t>(sh.M * 1000 + sh.K));
          for (size_t in = 0; in < inputs.size(); ++in) {
            SCOPED_TRACE(::testing::Message() << format_name<V>() << " G=" << G << " " << gname(gm) << " M=" << sh.M
                                              << " K=" << sh.K << " score=" << static_cast<int>(score) << " input=" << in);
            const auto& x = inputs[in];
            const Packed p = run_packed<V, G>(x, sh.M, sh.K, score, gm);
            const DenseDecomposition d =
                sharq_decompose_dense(x.data(), sh.M, sh.K, format_of<V>(), MaskSpec{mask_of(G), score}, gm);
            std::vector<float> xd(d.s_hat.size());
            for (size_t i = 0; i < xd.size(); ++i) xd[i] = d.s_hat[i] + d.r_hat[i];
            ASSERT_TRUE(bit_equal(p.g, d.g, 1)) << "second-level scales";
            ASSERT_TRUE(bit_equal(p.s_hat, d.s_hat, sh.K)) << "S^";
            ASSERT_TRUE(bit_equal(p.r_hat, d.r_hat, sh.K)) << "R^";
            ASSERT_TRUE(bit_equal(p.xhat, xd, sh.K)) << "X^ = S^ + R^";
            ++checked;
          }
        }
  });
  // NVFP4: 2 g modes x 8 shapes x (4 + 1) scores x 5 inputs; MXFP4, HiF4: 1 x 8 x 5 x 5 each
  EXPECT_EQ(checked, 400 + 200 + 200);
}

// ================================================================================================
// 2. The dense reference follows the spec step by step.

TEST(SharqDecompose, DenseReferenceFollowsSpecStepByStep) {
  for_each_variant([&]<class V, int G>() {
    using Fbb = typename V::Fbb;
    using Fres = typename V::Fres;
    for (const GlobalScale gm : gmodes<V>())
      for (const Shape sh : kShapes) {
        const auto inputs = all_inputs(sh.M, sh.K, 2000 + static_cast<uint64_t>(sh.M * 1000 + sh.K));
        for (size_t in = 0; in < inputs.size(); ++in) {
          SCOPED_TRACE(::testing::Message() << format_name<V>() << " G=" << G << " " << gname(gm) << " M=" << sh.M
                                            << " K=" << sh.K << " input=" << in);
          const auto& x = inputs[in];
          const int64_t M = sh.M, K = sh.K;
          const DenseDecomposition d =
              sharq_decompose_dense(x.data(), M, K, format_of<V>(), MaskSpec{mask_of(G), PairScore::max}, gm);
          ASSERT_EQ(d.rows, M);
          ASSERT_EQ(d.cols, K);
          // step 1: g_x = max|X| / 2688 (NVFP4 only), X~ = X / g_x in FP32
          const std::vector<float> g = ref_global(x, M, K, V::kGlobal ? gm : GlobalScale::none);
          ASSERT_TRUE(bit_equal(d.g, g, 1)) << "g";
          for (int64_t m = 0; m < M; ++m) {
            const float gm_ = g.empty() ? 1.0f : (g.size() == 1 ? g[0] : g[m]);
            const size_t o = static_cast<size_t>(m * K);
            std::vector<float> xt(x.begin() + o, x.begin() + o + K);
            for (float& v : xt) v /= gm_;
            ASSERT_TRUE(bit_equal(std::vector<float>(d.xt.begin() + o, d.xt.begin() + o + K), xt, K)) << "X~ row " << m;
            // step 2: S = mask(X~)
            const std::vector<uint8_t> keep = ref_mask(xt.data(), K, mask_of(G), PairScore::max);
            std::vector<float> s(static_cast<size_t>(K));
            for (int64_t c = 0; c < K; ++c) {
              ASSERT_EQ(d.keep[o + c], keep[c]) << "mask at (" << m << ", " << c << ")";
              s[c] = keep[c] ? xt[c] : 0.0f;
              ASSERT_TRUE(same_bits(d.s[o + c], s[c])) << "S at (" << m << ", " << c << ")";
            }
            // step 3: S^ = dequant(Qbb(S)) over blocks of Bbb logical positions; dropped stay 0
            const std::vector<float> sq = ref_quant_row<Fbb>(s.data(), K);
            for (int64_t c = 0; c < K; ++c) {
              if (!keep[c]) {
                ASSERT_EQ(d.s_hat[o + c], 0.0f) << "S^ at dropped (" << m << ", " << c << ")";
              }
              ASSERT_TRUE(same_value(d.s_hat[o + c], sq[c]))
                  << "S^ at (" << m << ", " << c << "): " << hex(d.s_hat[o + c]) << " vs spec " << hex(sq[c]);
            }
            // step 4: R = X~ - S^, exactly (the real difference, not just its FP32 rounding)
            std::vector<float> r(static_cast<size_t>(K));
            for (int64_t c = 0; c < K; ++c) {
              r[c] = d.r[o + c];
              ASSERT_EQ(static_cast<double>(d.r[o + c]),
                        static_cast<double>(d.xt[o + c]) - static_cast<double>(d.s_hat[o + c]))
                  << "R at (" << m << ", " << c << ")";
            }
            // step 5: R^ = dequant(Qres(R))
            const std::vector<float> rq = ref_quant_row<Fres>(r.data(), K);
            for (int64_t c = 0; c < K; ++c)
              ASSERT_TRUE(same_value(d.r_hat[o + c], rq[c]))
                  << "R^ at (" << m << ", " << c << "): " << hex(d.r_hat[o + c]) << " vs spec " << hex(rq[c]);
          }
        }
      }
  });
}

// ================================================================================================
// 3. Mask: exactly 2 of each aligned 4 (scalar 2:4) / 2 whole pairs of each aligned 8 (pair-4:8).
// Checked on the dense keep flags (full groups) and on the packed metadata over whole spans
// (padding included: a group is always 2-of-4 in the packed form).

TEST(SharqDecompose, MaskKeepsExactlyHalfOfEachGroup) {
  for_each_variant([&]<class V, int G>() {
    constexpr int B = V::Fbb::kBlock;
    for (const Shape sh : kShapes) {
      for (const auto& x : all_inputs(sh.M, sh.K, 3000 + static_cast<uint64_t>(sh.K))) {
        SCOPED_TRACE(::testing::Message() << format_name<V>() << " G=" << G << " M=" << sh.M << " K=" << sh.K);
        const int64_t M = sh.M, K = sh.K;
        const DenseDecomposition d = sharq_decompose_dense(x.data(), M, K, format_of<V>(), MaskSpec{mask_of(G)},
                                                           V::kGlobal ? GlobalScale::per_tensor : GlobalScale::none);
        const auto a = sharq_prepare<V, G>(x.data(), M, K, PairScore::max,
                                           V::kGlobal ? GlobalScale::per_tensor : GlobalScale::none);
        for (int64_t m = 0; m < M; ++m) {
          // dense, full groups
          for (int64_t g0 = 0; g0 + G <= K; g0 += G) {
            int kept = 0;
            for (int i = 0; i < G; ++i) kept += d.keep[m * K + g0 + i];
            ASSERT_EQ(kept, G / 2) << "row " << m << " group at " << g0;
            if (G == 8) {
              for (int p = 0; p < 4; ++p)
                ASSERT_EQ(d.keep[m * K + g0 + 2 * p], d.keep[m * K + g0 + 2 * p + 1]) << "pair split at " << g0 + 2 * p;
            }
          }
          // packed metadata, whole spans
          for (int64_t sp = 0; sp < a.spans_per_row; ++sp) {
            const auto& bb = a.backbone[m * a.spans_per_row + sp];
            const std::vector<uint8_t> keep = keep_from_metadata(bb.meta, B, mask_of(G));
            for (int g0 = 0; g0 < B; g0 += G) {
              const uint8_t nib = get_nibble(bb.meta, g0 / G);
              ASSERT_LT(nib & 3, (nib >> 2) & 3) << "metadata idx0 < idx1";
              int kept = 0;
              for (int i = 0; i < G; ++i) kept += keep[g0 + i];
              ASSERT_EQ(kept, G / 2);
              if (G == 8) {
                for (int p = 0; p < 4; ++p) ASSERT_EQ(keep[g0 + 2 * p], keep[g0 + 2 * p + 1]);
              }
            }
            for (int k = 0; k < B && sp * B + k < K; ++k) ASSERT_EQ(keep[k], d.keep[m * K + sp * B + k]);
          }
        }
      }
    }
  });
}

TEST(SharqDecompose, MaskTiesGoToTheLowerIndex) {
  // All-equal groups keep the two lowest units; an all-zero group (padding) too.
  const std::vector<float> x = {3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, -2, 2, -1, 2, 2, -2, 1};
  const DenseDecomposition p = sharq_decompose_dense(x.data(), 1, 24, SharqFormat::mxfp4, MaskSpec{MaskKind::pair48}, GlobalScale::none);
  const std::vector<uint8_t> want_p = {1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0};
  EXPECT_EQ(p.keep, want_p);  // third group: every pair scores 2, so pairs 0 and 1
  const DenseDecomposition s = sharq_decompose_dense(x.data(), 1, 24, SharqFormat::mxfp4, MaskSpec{MaskKind::scalar24}, GlobalScale::none);
  const std::vector<uint8_t> want_s = {1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0};
  EXPECT_EQ(s.keep, want_s);
}

// ================================================================================================
// 4. R^ reconstructs R within the NVFP4-16 error.
//
// Bound used (exact for round-to-nearest E2M1 with a saturating top): with s the block's decoded
// UE4M3 scale and t = |r| / s,
//   t <= 6:  |R^ - R| <= s * halfgap(t), halfgap = 0.25 (t <= 2), 0.5 (t <= 4), 1 (t <= 6);
//   t >  6:  |R^ - R| = |r| - 6 s (saturation).
// Hence |R^ - R| <= max(s, amax - 6 s) in every block, and |R^ - R| <= s whenever s is a normal
// UE4M3 value (s >= 2^-6): RNE to 3 mantissa bits gives amax / 6 <= s (1 + 2^-4), so amax - 6 s
// <= 0.375 s. A slack of 2^-22 |r| covers the FP32 rounding of r / s.
TEST(SharqDecompose, ResidualWithinNvfp4Bound) {
  int blocks = 0, normal_blocks = 0;
  double worst_ratio = 0.0;  // max |err| / s over blocks with a normal scale
  for (const MaskKind mk : {MaskKind::pair48, MaskKind::scalar24})
    for (const GlobalScale gm : {GlobalScale::per_tensor, GlobalScale::per_row})
      for (const Shape sh : kShapes)
        for (const auto& x : all_inputs(sh.M, sh.K, 4000 + static_cast<uint64_t>(sh.K))) {
          const DenseDecomposition d = sharq_decompose_dense(x.data(), sh.M, sh.K, SharqFormat::nvfp4, MaskSpec{mk}, gm);
          for (int64_t m = 0; m < sh.M; ++m)
            for (int64_t b0 = 0; b0 < sh.K; b0 += 16) {
              const int n = static_cast<int>(std::min<int64_t>(16, sh.K - b0));
              const float* r = &d.r[m * sh.K + b0];
              const float* rh = &d.r_hat[m * sh.K + b0];
              float blk[16] = {}, q[16];
              std::copy(r, r + n, blk);
              double s = 0.0;
              ref_nvfp4_block(blk, 16, q, &s);
              const double amax = amax_of(blk, 16);
              ++blocks;
              if (s >= 0x1p-6) ++normal_blocks;
              for (int i = 0; i < n; ++i) {
                const double a = std::fabs(static_cast<double>(r[i]));
                const double err = std::fabs(static_cast<double>(rh[i]) - r[i]);
                const double t = s > 0 ? a / s : std::numeric_limits<double>::infinity();
                const double tight = t <= 6.0 ? s * (t <= 2.0 ? 0.25 : (t <= 4.0 ? 0.5 : 1.0)) : a - 6.0 * s;
                const double slack = a * 0x1p-22;
                ASSERT_LE(err, tight + slack) << "row " << m << " col " << b0 + i << " r=" << hex(r[i]) << " s=" << s;
                ASSERT_LE(err, std::max(s, amax - 6.0 * s) + slack);
                if (s >= 0x1p-6) {
                  ASSERT_LE(err, s + slack);
                  worst_ratio = std::max(worst_ratio, err / s);
                }
              }
            }
        }
  std::printf("residual blocks checked: %d (%d with a normal scale); worst |R^-R|/s = %.4f\n", blocks,
              normal_blocks, worst_ratio);
  EXPECT_GT(normal_blocks, blocks / 2);  // the bound |err| <= s was exercised, not vacuous
}

// ================================================================================================
// 5. On outlier-heavy input, S^ + R^ is closer to X~ than plain NVFP4-16 of X~.

template <class F, class V, int G>
void check_beats_baseline(GlobalScale gm, double max_ratio_kept, double max_ratio_all) {
  constexpr int64_t M = 32, K = 1024;
  const std::vector<float> x = outlier_heavy(M, K, 77, 16);
  const DenseDecomposition d = sharq_decompose_dense(x.data(), M, K, format_of<V>(), MaskSpec{mask_of(G)}, gm);
  // Plain quantization of the same X~ (same g).
  const QuantizedMatrix<F> q = quantize_matrix<F>(x.data(), M, K, V::kGlobal ? gm : GlobalScale::none);
  const std::vector<float> base = dequantize_matrix(q, false);
  double e_sharq_kept = 0, e_base_kept = 0, e_sharq = 0, e_base = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double xt = d.xt[i];
    const double es = std::pow(static_cast<double>(d.s_hat[i]) + d.r_hat[i] - xt, 2.0);
    const double eb = std::pow(static_cast<double>(base[i]) - xt, 2.0);
    e_sharq += es;
    e_base += eb;
    if (d.keep[i]) { e_sharq_kept += es; e_base_kept += eb; }
  }
  std::printf("%-6s G=%d %-10s  squared error kept: sharq %.4g vs base %.4g (ratio %.3f);  all: sharq %.4g vs base "
              "%.4g (ratio %.3f)\n",
              format_name<V>(), G, gname(gm), e_sharq_kept, e_base_kept, e_sharq_kept / e_base_kept, e_sharq, e_base,
              e_sharq / e_base);
  EXPECT_LT(e_sharq_kept, max_ratio_kept * e_base_kept) << format_name<V>() << " G=" << G << " " << gname(gm);
  EXPECT_LT(e_sharq, max_ratio_all * e_base) << format_name<V>() << " G=" << G << " " << gname(gm);
}

TEST(SharqDecompose, BeatsPlainQuantizationOnOutlierHeavyInput) {
  for (const GlobalScale gm : {GlobalScale::per_tensor, GlobalScale::per_row}) {
    check_beats_baseline<Nvfp4_16, SharqNvfp4, 8>(gm, 0.2, 0.2);
    check_beats_baseline<Nvfp4_16, SharqNvfp4, 4>(gm, 0.2, 0.2);
  }
  check_beats_baseline<Mxfp4, SharqMxfp4, 8>(GlobalScale::none, 0.2, 0.2);
  check_beats_baseline<Mxfp4, SharqMxfp4, 4>(GlobalScale::none, 0.2, 0.2);
  check_beats_baseline<Hif4, SharqHif4, 8>(GlobalScale::none, 0.2, 0.2);
  check_beats_baseline<Hif4, SharqHif4, 4>(GlobalScale::none, 0.2, 0.2);
}

// ================================================================================================
// 6. The packed backbone block: layout, metadata and kept codes.

template <class V, int G>
void check_backbone_layout() {
  using Fbb = typename V::Fbb;
  using bb_t = backbone_block_t<V, G>;
  constexpr int B = Fbb::kBlock;
  static_assert(sizeof(bb_t::meta) * 2 == B / G, "one metadata nibble per mask group");
  static_assert(sizeof(bb_t::qs) * 2 == B / 2, "B/2 kept codes");
  constexpr int64_t M = 3, K = 200;
  const std::vector<float> x = outlier_heavy(M, K, 5);
  const GlobalScale gm = V::kGlobal ? GlobalScale::per_row : GlobalScale::none;
  const auto a = sharq_prepare<V, G>(x.data(), M, K, PairScore::max, gm);
  const DenseDecomposition d = sharq_decompose_dense(x.data(), M, K, format_of<V>(), MaskSpec{mask_of(G)}, gm);
  ASSERT_EQ(a.spans_per_row, (K + B - 1) / B);
  ASSERT_EQ(a.backbone.size(), static_cast<size_t>(M * a.spans_per_row));
  ASSERT_EQ(a.residual.size(), static_cast<size_t>(M * a.spans_per_row * (B / V::Fres::kBlock)));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t sp = 0; sp < a.spans_per_row; ++sp) {
      const bb_t& bb = a.backbone[m * a.spans_per_row + sp];
      // the scale is Fbb's scale of S over the logical span (dropped positions are 0)
      float s[B] = {};
      for (int k = 0; k < B && sp * B + k < K; ++k) s[k] = d.s[m * K + sp * B + k];
      typename Fbb::block_t q;
      Fbb::quantize(s, q);
      ASSERT_EQ(std::memcmp(&bb.s, &q.s, sizeof q.s), 0) << "scale of span " << sp;
      // metadata decodes to the dense mask; the kept codes sit in ascending K order
      const std::vector<uint8_t> keep = keep_from_metadata(bb.meta, B, mask_of(G));
      int kept = 0;
      for (int k = 0; k < B; ++k) {
        const int64_t c = sp * B + k;
        if (c < K) {
          ASSERT_EQ(keep[k], d.keep[m * K + c]) << "(" << m << ", " << c << ")";
        }
        if (!keep[k]) continue;
        const uint8_t code = get_nibble(bb.qs, kept++);
        ASSERT_EQ(code, get_nibble(q.qs, k)) << "kept code " << kept - 1 << " of span " << sp;
        if (c < K) {
          ASSERT_TRUE(same_bits(Fbb::decode(code) * Fbb::element_scale(bb.s, k), d.s_hat[m * K + c]));
        }
      }
      ASSERT_EQ(kept, B / 2);
    }
}

TEST(SharqDecompose, PackedBackboneBlockLayout) {
  // NVFP4 pair-4:8: 1 B UE4M3 scale + 4 metadata nibbles (2 B) + 16 kept codes (8 B) per 32 logical.
  static_assert(sizeof(block_bb_nvfp4_p48) == 11);
  static_assert(sizeof(block_bb_nvfp4_p48::meta) == 2 && sizeof(block_bb_nvfp4_p48::qs) == 8);
  static_assert(sizeof(block_bb_nvfp4_s24::meta) == 4 && sizeof(block_bb_nvfp4_s24::qs) == 8);
  static_assert(std::is_same_v<backbone_block_t<SharqNvfp4, 8>, block_bb_nvfp4_p48>);
  static_assert(std::is_same_v<backbone_block_t<SharqNvfp4, 4>, block_bb_nvfp4_s24>);
  static_assert(std::is_same_v<backbone_block_t<SharqHif4, 4>, block_bb_hif4_s24>);
  for_each_variant([&]<class V, int G>() {
    SCOPED_TRACE(::testing::Message() << format_name<V>() << " G=" << G);
    check_backbone_layout<V, G>();
  });
  // A hand-checked block: values 1..32 with pair-4:8 keep pairs 2, 3 of every 8.
  std::vector<float> x(32);
  std::iota(x.begin(), x.end(), 1.0f);
  const auto a = sharq_prepare<SharqMxfp4, 8>(x.data(), 1, 32, PairScore::max, GlobalScale::none);
  const block_bb_mxfp4_p48& bb = a.backbone[0];
  for (int g = 0; g < 4; ++g) EXPECT_EQ(get_nibble(bb.meta, g), 2 | (3 << 2)) << "group " << g;
  EXPECT_EQ(bb.s.e, 127 + 5 - 2);  // amax 32 = 2^5 -> 2^(5 - 2)
}

// ================================================================================================
// 7. The W32 shared weight payload: the 16-block view equals the 32-block view.

TEST(SharqDecompose, W32SharedSixteenBlockViewEqualsThirtyTwoBlockView) {
  for (const int64_t K : {16, 40, 64, 100, 200}) {
    constexpr int64_t N = 7;
    const std::vector<float> w = outlier_heavy(N, K, 11 + static_cast<uint64_t>(K), 2);
    const QuantizedMatrix<Nvfp4_32> q32 = quantize_matrix<Nvfp4_32>(w.data(), N, K, GlobalScale::per_tensor);
    const std::vector<float> w32 = dequantize_matrix(q32, false);
    const int64_t n16 = (K + 15) / 16;
    ASSERT_LE(n16, 2 * q32.blocks_per_row);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < n16; ++j) {
        const block_nvfp4_16 v = nvfp4_16_view(q32, n, j);
        const block_nvfp4_32& b = q32.row(n)[j / 2];
        ASSERT_EQ(v.s.e, b.s.e) << "the 32-block scale code, duplicated";
        float out[16];
        dequantize_block<Nvfp4_16>(v, out);
        for (int k = 0; k < 16; ++k) {
          ASSERT_EQ(get_nibble(v.qs, k), get_nibble(b.qs, static_cast<int>(16 * (j % 2) + k)));
          const int64_t c = 16 * j + k;
          if (c < K) {
            ASSERT_TRUE(same_bits(out[k], w32[n * K + c])) << "(" << n << ", " << c << ")";
          } else {
            ASSERT_EQ(out[k], 0.0f) << "padding";
          }
        }
      }
    // And the 32-block payload is what the spec says: NVFP4-32 of W / g_w.
    const std::vector<float> g = ref_global(w, N, K, GlobalScale::per_tensor);
    ASSERT_TRUE(bit_equal(q32.g, g, 1));
    for (int64_t n = 0; n < N; ++n) {
      std::vector<float> row(w.begin() + n * K, w.begin() + (n + 1) * K);
      for (float& v : row) v /= g[0];
      const std::vector<float> ref = ref_quant_row<Nvfp4_32>(row.data(), K);
      for (int64_t c = 0; c < K; ++c) ASSERT_TRUE(same_value(w32[n * K + c], ref[c])) << "(" << n << ", " << c << ")";
    }
  }
}

// ================================================================================================
// 8. NaN / Inf: a non-finite input poisons its own backbone span and nothing else.
//
// Why the span: the non-finite value ranks highest in its mask group, so it is kept, and the
// backbone block over its span gets the NaN scale (block_quant.h): S^ is NaN at every kept position
// of the span (and 0 at the dropped ones). R = X~ - S^ is then NaN at those kept positions, and
// every residual block of the span holds some of them (each 16-half of a 32-span holds 8 kept
// positions), so X^ = S^ + R^ is NaN over exactly the span. The second-level scale uses the finite
// values only, so other rows and other spans are untouched.

TEST(SharqDecompose, NonFiniteInputPoisonsOnlyItsBackboneSpan) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for_each_variant([&]<class V, int G>() {
    constexpr int B = V::Fbb::kBlock;
    constexpr int64_t M = 4, K = 100;
    std::vector<float> x = outlier_heavy(M, K, 9);
    struct Bad { int64_t m, k; float v; };
    const Bad bad[] = {{0, 35, nan}, {1, 97, inf}, {2, 5, -inf}, {2, 70, nan}};  // row 3 stays clean
    for (const Bad& b : bad) x[b.m * K + b.k] = b.v;
    auto poisoned = [&](int64_t m, int64_t c) {
      for (const Bad& b : bad)
        if (b.m == m && b.k / B == c / B) return true;
      return false;
    };
    for (const GlobalScale gm : gmodes<V>()) {
      SCOPED_TRACE(::testing::Message() << format_name<V>() << " G=" << G << " " << gname(gm));
      const Packed p = run_packed<V, G>(x, M, K, PairScore::max, gm);
      const DenseDecomposition d = sharq_decompose_dense(x.data(), M, K, format_of<V>(), MaskSpec{mask_of(G)}, gm);
      ASSERT_TRUE(bit_equal(p.s_hat, d.s_hat, K));
      ASSERT_TRUE(bit_equal(p.r_hat, d.r_hat, K));
      // the second-level scale ignores the non-finite values
      ASSERT_TRUE(bit_equal(d.g, ref_global(x, M, K, V::kGlobal ? gm : GlobalScale::none), 1));
      for (const float g : d.g) ASSERT_TRUE(std::isfinite(g));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t c = 0; c < K; ++c) {
          const size_t i = static_cast<size_t>(m * K + c);
          if (poisoned(m, c)) {
            ASSERT_TRUE(std::isnan(p.xhat[i])) << "X^ should be NaN at (" << m << ", " << c << ")";
            if (d.keep[i]) {
              ASSERT_TRUE(std::isnan(p.s_hat[i]));
            } else {
              ASSERT_EQ(float_bits(p.s_hat[i]), 0u) << "a dropped position stays +0 even in a NaN span";
            }
          } else {
            ASSERT_TRUE(std::isfinite(p.xhat[i])) << "X^ should be finite at (" << m << ", " << c << ")";
          }
        }
    }
  });
}

// ================================================================================================
// 9. Empty matrices.

TEST(SharqDecompose, EmptyMatricesWork) {
  for_each_variant([&]<class V, int G>() {
    constexpr int B = V::Fbb::kBlock;
    SCOPED_TRACE(::testing::Message() << format_name<V>() << " G=" << G);
    const std::vector<float> none;
    for (const GlobalScale gm : gmodes<V>())
      for (const Shape sh : {Shape{0, 0}, Shape{0, 40}, Shape{3, 0}}) {
        const auto a = sharq_prepare<V, G>(none.data(), sh.M, sh.K, PairScore::max, gm);
        EXPECT_EQ(a.rows, sh.M);
        EXPECT_EQ(a.cols, sh.K);
        EXPECT_EQ(a.spans_per_row, (sh.K + B - 1) / B);
        EXPECT_TRUE(a.backbone.empty());
        EXPECT_TRUE(a.residual.empty());
        for (int64_t m = 0; m < sh.M; ++m) sharq_dequantize_row<V, G>(a, m, nullptr, nullptr, nullptr);
        const DenseDecomposition d = sharq_decompose_dense(none.data(), sh.M, sh.K, format_of<V>(), MaskSpec{mask_of(G)}, gm);
        EXPECT_TRUE(d.xt.empty() && d.s_hat.empty() && d.r_hat.empty() && d.keep.empty());
        if (V::kGlobal) {
          EXPECT_EQ(d.g.size(), gm == GlobalScale::per_tensor ? 1u : static_cast<size_t>(sh.M));
          for (const float g : d.g) EXPECT_EQ(g, 1e-9f);
          EXPECT_EQ(a.g, d.g);
        }
      }
    EXPECT_THROW((sharq_prepare<V, G>(none.data(), -1, 4, PairScore::max, GlobalScale::none)), std::invalid_argument);
    EXPECT_THROW(sharq_decompose_dense(none.data(), 2, -4, format_of<V>(), MaskSpec{mask_of(G)}, GlobalScale::none),
                 std::invalid_argument);
  });
}

}  // namespace
}  // namespace sharq
