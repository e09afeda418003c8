// cuBLASLt baselines (f16, bf16, fp8_e4m3) against an FP64 reference on the *rounded* operands, and
// the per-tensor FP8 quantizer against the host codec bit for bit. Label `gpu`; the GPU tests skip
// cleanly where there is no GPU, the argument checks run everywhere (they make no CUDA call).
//
// Tolerances (relative Frobenius error ||Y - ref|| / ||ref||, ref in FP64 on the exact operands the
// GPU sees, so the only errors are the FP32 accumulation and the output rounding):
//   * the output rounding of each element is at most the unit roundoff u of the output type
//     (|round(y) - y| <= u |y|), so it contributes at most u to the relative Frobenius error
//     (typically ~0.4 u: uniform error within an ulp);
//   * FP32 accumulation with K <= 320 and N(0, 1) data: gamma_K * || |X| |W|^T || / ||X W^T||
//     <= 320 * 2^-24 * ~0.64 sqrt(K) ~ 2e-4 in the worst case, ~1e-6 in practice;
//   * a split-K algorithm may reduce its partial sums in the output type (cuBLASLt's
//     OUTPUT_TYPE reduction scheme): one more rounding per split.
//   f16  out (u = 2^-11 = 4.9e-4): bound 1.0e-3 (~2 u; typical ~2e-4).
//   bf16 out (u = 2^-8  = 3.9e-3): bound 6.0e-3 (~1.5 u; typical ~1.6e-3).
//   fp8 -> bf16 out: bound 8.0e-3: bf16 rounding as above plus the FP8 tensor cores' reduced-
//   precision accumulation with fast accumulation on (DeepSeek-V3 reports ~14 retained bits on
//   Hopper; with K <= 320 that is well below 1e-3). A wrong transpose, scale or layout gives O(1).
#include "sharq/kernels/cuda/cublaslt_gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "../../support/gpu_test.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"

namespace {

using namespace sharq;
using cuda::BlasType;
using cuda::CublasLtGemm;
using cuda::DeviceBuffer;

constexpr int64_t kMs[] = {1, 7, 64, 300};
constexpr int64_t kNs[] = {8, 136, 256};
constexpr int64_t kKs[] = {64, 96, 320};

constexpr double kTolF16 = 1.0e-3;
constexpr double kTolBf16 = 6.0e-3;
constexpr double kTolFp8 = 8.0e-3;
// FP8 result against the unquantized BF16 product: E4M3 rounds each operand with relative error
// <= 2^-4 (RMS ~2.5 %), ~3.5 % on the products; 0.1 only catches a gross scale error.
constexpr double kTolFp8VsBf16 = 0.1;

std::vector<float> normal(size_t n, uint64_t seed, float sigma) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// f rounded to BF16 (bf) or FP16: the bits and their exact values.
struct Rounded {
  std::vector<uint16_t> bits;
  std::vector<double> value;
};
Rounded round16(const std::vector<float>& f, bool bf) {
  Rounded r{std::vector<uint16_t>(f.size()), std::vector<double>(f.size())};
  for (size_t i = 0; i < f.size(); ++i) {
    r.bits[i] = bf ? bf16_encode(f[i]) : fp16_encode(f[i]);
    r.value[i] = bf ? bf16_decode(r.bits[i]) : fp16_decode(r.bits[i]);
  }
  return r;
}

// ref[m, n] = sum_k x[m, k] w[n, k] in FP64.
std::vector<double> reference(const std::vector<double>& x, const std::vector<double>& w, int64_t M, int64_t N,
                              int64_t K) {
  std::vector<double> ref(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * w[n * K + k];
      ref[m * N + n] = s;
    }
  return ref;
}

double rel_frobenius(const std::vector<float>& y, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(y[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// Number of non-finite outputs: the 0xFF poison is NaN in FP16 and BF16, so an element that the
// GEMM did not write shows up here.
size_t count_nonfinite(const std::vector<float>& y) {
  size_t c = 0;
  for (float v : y) c += std::isfinite(v) ? 0 : 1;
  return c;
}

void poison(DeviceBuffer<uint16_t>& y) { SHARQ_CUDA_CHECK(cudaMemset(y.get(), 0xFF, y.bytes())); }

std::vector<float> decode16(const std::vector<uint16_t>& h, bool bf16) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = bf16 ? bf16_decode(h[i]) : fp16_decode(h[i]);
  return f;
}

// ---------------------------------------------------------------------------------------------
// f16 / bf16
void check_half_type(BlasType t, double tol) {
  const bool bf = t == BlasType::bf16;
  CublasLtGemm gemm;
  double worst = 0.0;
  for (int64_t M : kMs)
    for (int64_t N : kNs)
      for (int64_t K : kKs) {
        SCOPED_TRACE(std::string(cuda::blas_type_name(t)) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                     " K=" + std::to_string(K));
        const Rounded x = round16(normal(static_cast<size_t>(M * K), 1000 + M * 7 + K, 1.0f), bf);
        const Rounded w = round16(normal(static_cast<size_t>(N * K), 2000 + N * 11 + K, 1.0f), bf);
        const std::vector<uint16_t>& xh = x.bits;
        const std::vector<uint16_t>& wh = w.bits;
        const auto ref = reference(x.value, w.value, M, N, K);
        DeviceBuffer<uint16_t> dx(xh.size()), dw(wh.size()), dy(static_cast<size_t>(M * N));
        dx.upload(xh.data());
        dw.upload(wh.data());
        for (int rep = 0; rep < 2; ++rep) {  // the second call takes the cached plan
          poison(dy);
          gemm.matmul(t, dx.get(), dw.get(), dy.get(), M, N, K, nullptr, nullptr, nullptr);
          SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
          const auto y = decode16(dy.to_host(), bf);
          ASSERT_EQ(count_nonfinite(y), 0u) << "rep " << rep;
          const double err = rel_frobenius(y, ref);
          EXPECT_LE(err, tol) << "rep " << rep;
          worst = std::max(worst, err);
        }
      }
  std::printf("[cublaslt] %s: worst relative Frobenius error %.3e (bound %.1e)\n", cuda::blas_type_name(t), worst, tol);
}

// accumulate = true: Y += X W^T into FP32 Y (beta = 1, C = D = Y), for both 16-bit input types.
// Against the same plan's product written alone (Y0 + P: the same FP32 accumulator, one FP32 add,
// so equal up to that add's rounding) and against the FP64 reference; a second call adds P again,
// so Y is read each time.
TEST(CublasLtGemm, AccumulateAddsTheProductIntoFp32Rows) {
  SKIP_WITHOUT_GPU();
  CublasLtGemm gemm;
  for (BlasType t : {BlasType::f16_f32out, BlasType::bf16_f32out})
    for (const auto& [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 256, 512}, {37, 200, 96}, {256, 512, 1024}}) {
      SCOPED_TRACE(std::string(cuda::blas_type_name(t)) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                   " K=" + std::to_string(K));
      const bool bf = t == BlasType::bf16_f32out;
      const Rounded x = round16(normal(static_cast<size_t>(M * K), 3000 + M + K, 1.0f), bf);
      const Rounded w = round16(normal(static_cast<size_t>(N * K), 4000 + N + K, 1.0f), bf);
      const auto y0 = normal(static_cast<size_t>(M * N), 5000 + M * N, 4.0f);
      const std::vector<uint16_t>& xh = x.bits;
      const std::vector<uint16_t>& wh = w.bits;
      const auto ref = reference(x.value, w.value, M, N, K);
      DeviceBuffer<uint16_t> dx(xh.size()), dw(wh.size());
      DeviceBuffer<float> dp(static_cast<size_t>(M * N)), dy(static_cast<size_t>(M * N));
      dx.upload(xh.data());
      dw.upload(wh.data());
      dy.upload(y0.data());
      gemm.matmul(t, dx.get(), dw.get(), dp.get(), M, N, K, nullptr, nullptr, nullptr);
      gemm.matmul(t, dx.get(), dw.get(), dy.get(), M, N, K, nullptr, nullptr, nullptr, 1.0f, /*accumulate=*/true);
      SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> p = dp.to_host(), y1 = dy.to_host();
      gemm.matmul(t, dx.get(), dw.get(), dy.get(), M, N, K, nullptr, nullptr, nullptr, 1.0f, /*accumulate=*/true);
      SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> y2 = dy.to_host();
      double worst1 = 0.0, worst2 = 0.0, worst_ref = 0.0;
      size_t exact = 0;
      for (size_t i = 0; i < y0.size(); ++i) {
        const double e1 = static_cast<double>(y0[i]) + p[i], e2 = e1 + p[i];
        const double scale = std::fabs(y0[i]) + 2.0 * std::fabs(p[i]) + 1e-30;
        worst1 = std::max(worst1, std::fabs(y1[i] - e1) / scale);
        worst2 = std::max(worst2, std::fabs(y2[i] - e2) / scale);
        worst_ref = std::max(worst_ref, std::fabs(y1[i] - (y0[i] + ref[i])) / (std::fabs(y0[i]) + std::sqrt(double(K))));
        exact += y1[i] == static_cast<float>(y0[i] + p[i]);
      }
      std::printf("[cublaslt] %s accumulate M=%lld N=%lld K=%lld: vs Y0 + P %.2e (%zu/%zu bit-exact), second add %.2e, "
                  "vs FP64 %.2e\n", cuda::blas_type_name(t), static_cast<long long>(M), static_cast<long long>(N),
                  static_cast<long long>(K), worst1, exact, y0.size(), worst2, worst_ref);
      EXPECT_LE(worst1, 2e-7);  // one FP32 rounding of the sum
      EXPECT_LE(worst2, 4e-7);
      EXPECT_LE(worst_ref, bf ? kTolBf16 : kTolF16);
    }
}

TEST(CublasLtGemm, F16MatchesFp64ReferenceOnRoundedOperands) {
  SKIP_WITHOUT_GPU();
  check_half_type(BlasType::f16, kTolF16);
}

TEST(CublasLtGemm, Bf16MatchesFp64ReferenceOnRoundedOperands) {
  SKIP_WITHOUT_GPU();
  check_half_type(BlasType::bf16, kTolBf16);
}

// ---------------------------------------------------------------------------------------------
// Per-tensor FP8 quantization, host reference with the same codec.
struct HostFp8 {
  float scale;
  std::vector<uint8_t> codes;
};

HostFp8 quantize_host(const std::vector<uint16_t>& xb) {
  float amax = 0.0f;
  for (uint16_t b : xb) {
    const float a = std::fabs(bf16_decode(b));
    if (std::isfinite(a) && a > amax) amax = a;
  }
  HostFp8 q;
  q.scale = amax > 0.0f ? amax / 448.0f : 1.0f;
  q.codes.resize(xb.size());
  for (size_t i = 0; i < xb.size(); ++i) q.codes[i] = e4m3_encode(bf16_decode(xb[i]) / q.scale);
  return q;
}

HostFp8 quantize_device(const std::vector<uint16_t>& xb) {
  DeviceBuffer<uint16_t> dx(xb.size());
  DeviceBuffer<uint8_t> dq(xb.size());
  DeviceBuffer<float> ds(1);
  dx.upload(xb.data());
  if (!xb.empty()) SHARQ_CUDA_CHECK(cudaMemset(dq.get(), 0xAB, dq.bytes()));
  cuda::quantize_fp8_per_tensor(dx.get(), static_cast<int64_t>(xb.size()), dq.get(), ds.get(), nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  HostFp8 q;
  ds.download(&q.scale);
  q.codes = dq.to_host();
  return q;
}

void expect_same(const HostFp8& d, const HostFp8& h) {
  EXPECT_EQ(f32_bits(d.scale), f32_bits(h.scale)) << d.scale << " vs " << h.scale;
  ASSERT_EQ(d.codes.size(), h.codes.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < h.codes.size(); ++i)
    if (d.codes[i] != h.codes[i] && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << "first mismatch at " << first << ": " << int(d.codes[first]) << " vs " << int(h.codes[first]);
}

std::vector<uint16_t> to_bf16(const std::vector<float>& f) {
  std::vector<uint16_t> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = bf16_encode(f[i]);
  return b;
}

TEST(QuantizeFp8PerTensor, RandomDataMatchesHostCodecBitExactly) {
  SKIP_WITHOUT_GPU();
  for (size_t n : {size_t{1}, size_t{255}, size_t{4097}, (size_t{1} << 20) + 3}) {  // several grid sizes
    SCOPED_TRACE(n);
    const auto xb = to_bf16(normal(n, 77 + n, 3.0f));
    const auto h = quantize_host(xb);
    expect_same(quantize_device(xb), h);
    // the largest magnitude maps to the top of the E4M3 range
    size_t n448 = 0;
    for (uint8_t c : h.codes) n448 += (c & 0x7F) == 0x7E;
    EXPECT_GE(n448, 1u);
  }
}

// Special values, as defined by the header: amax ignores +-Inf and NaN; +-Inf saturate to +-448
// (0x7E / 0xFE, E4M3 has no Inf), NaN of either sign -> 0x7F, +-0 -> 0x00 / 0x80.
TEST(QuantizeFp8PerTensor, NanAndInfinityHandling) {
  SKIP_WITHOUT_GPU();
  const uint16_t kPosInf = 0x7F80, kNegInf = 0xFF80, kNan = 0x7FC0, kNegNan = 0xFFC0;
  std::vector<uint16_t> xb = {bf16_encode(1.0f),   bf16_encode(-3.5f), 0x0000, 0x8000, kPosInf, kNegInf, kNan,
                              kNegNan,             bf16_encode(100.0f), bf16_encode(-250.0f), 0x0001 /* subnormal */};
  const auto h = quantize_host(xb);
  const auto d = quantize_device(xb);
  expect_same(d, h);
  EXPECT_EQ(d.scale, 250.0f / 448.0f);  // amax = 250 (exact in BF16): the finite values only
  EXPECT_EQ(d.codes[2], 0x00);
  EXPECT_EQ(d.codes[3], 0x80);
  EXPECT_EQ(d.codes[4], 0x7E);  // +Inf -> +448
  EXPECT_EQ(d.codes[5], 0xFE);  // -Inf -> -448
  EXPECT_EQ(d.codes[6], 0x7F);  // NaN
  EXPECT_EQ(d.codes[7], 0x7F);  // -NaN: the codec's NaN is sign-less
  EXPECT_EQ(d.codes[9], 0xFE);  // the amax element -> -448

  // Nothing finite and nonzero: amax = 0 -> scale 1.
  const std::vector<uint16_t> degenerate = {0x0000, 0x8000, kNan, kPosInf, kNegInf};
  const auto d2 = quantize_device(degenerate);
  expect_same(d2, quantize_host(degenerate));
  EXPECT_EQ(d2.scale, 1.0f);
  EXPECT_EQ(d2.codes, (std::vector<uint8_t>{0x00, 0x80, 0x7F, 0x7E, 0xFE}));

  // Extreme magnitudes: only BF16 subnormals (tiny scale, still > 0), and the largest finite BF16.
  const std::vector<uint16_t> tiny = {0x0001, 0x8003, 0x007F, 0x0040};
  const auto d3 = quantize_device(tiny);
  expect_same(d3, quantize_host(tiny));
  EXPECT_GT(d3.scale, 0.0f);
  const std::vector<uint16_t> huge = {0x7F7F, 0xFF7F, bf16_encode(1.0f), bf16_encode(1e30f)};
  expect_same(quantize_device(huge), quantize_host(huge));

  // n == 0: no data pointers needed; the scale is 1.
  DeviceBuffer<float> ds(1);
  cuda::quantize_fp8_per_tensor(nullptr, 0, nullptr, ds.get(), nullptr);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  float s = 0.0f;
  ds.download(&s);
  EXPECT_EQ(s, 1.0f);
}

// ---------------------------------------------------------------------------------------------
// FP8: quantize X and W per tensor on the device, GEMM, compare against FP64 on decoded codes x scales.
TEST(CublasLtGemm, Fp8MatchesFp64ReferenceOnDecodedCodes) {
  SKIP_WITHOUT_GPU();
  CublasLtGemm gemm;
  EXPECT_TRUE(gemm.fp8_fast_accum());  // the documented default
  for (bool fast : {true, false}) {
    gemm.set_fp8_fast_accum(fast);
    double worst = 0.0;
    for (int64_t M : kMs)
      for (int64_t N : kNs)
        for (int64_t K : kKs) {
          SCOPED_TRACE("fp8 fast_accum=" + std::to_string(fast) + " M=" + std::to_string(M) +
                       " N=" + std::to_string(N) + " K=" + std::to_string(K));
          // Different magnitudes so that the two scales are far from 1 and from each other.
          const auto xb = to_bf16(normal(static_cast<size_t>(M * K), 3000 + M * 7 + K, 2.0f));
          const auto wb = to_bf16(normal(static_cast<size_t>(N * K), 4000 + N * 11 + K, 0.05f));
          DeviceBuffer<uint16_t> dxb(xb.size()), dwb(wb.size()), dy(static_cast<size_t>(M * N));
          DeviceBuffer<uint8_t> dqx(xb.size()), dqw(wb.size());
          DeviceBuffer<float> dsx(1), dsw(1);
          dxb.upload(xb.data());
          dwb.upload(wb.data());
          cuda::quantize_fp8_per_tensor(dxb.get(), static_cast<int64_t>(xb.size()), dqx.get(), dsx.get(), nullptr);
          cuda::quantize_fp8_per_tensor(dwb.get(), static_cast<int64_t>(wb.size()), dqw.get(), dsw.get(), nullptr);
          const auto qx = dqx.to_host(), qw = dqw.to_host();
          float sx = 0.0f, sw = 0.0f;
          dsx.download(&sx);
          dsw.download(&sw);
          ASSERT_EQ(f32_bits(sx), f32_bits(quantize_host(xb).scale));
          ASSERT_EQ(f32_bits(sw), f32_bits(quantize_host(wb).scale));

          std::vector<double> xr(qx.size()), wr(qw.size()), xe(xb.size()), we(wb.size());
          for (size_t i = 0; i < qx.size(); ++i) {
            xr[i] = static_cast<double>(e4m3_decode(qx[i])) * sx;
            xe[i] = bf16_decode(xb[i]);
          }
          for (size_t i = 0; i < qw.size(); ++i) {
            wr[i] = static_cast<double>(e4m3_decode(qw[i])) * sw;
            we[i] = bf16_decode(wb[i]);
          }
          const auto ref = reference(xr, wr, M, N, K);
          const auto exact = reference(xe, we, M, N, K);
          for (int rep = 0; rep < 2; ++rep) {
            poison(dy);
            gemm.matmul(BlasType::fp8_e4m3, dqx.get(), dqw.get(), dy.get(), M, N, K, dsx.get(), dsw.get(), nullptr);
            SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
            const auto y = decode16(dy.to_host(), true);
            ASSERT_EQ(count_nonfinite(y), 0u) << "rep " << rep;
            const double err = rel_frobenius(y, ref);
            EXPECT_LE(err, kTolFp8) << "rep " << rep;
            EXPECT_LE(rel_frobenius(y, exact), kTolFp8VsBf16) << "rep " << rep;
            worst = std::max(worst, err);
          }
        }
    std::printf("[cublaslt] fp8_e4m3 (fast_accum=%d): worst relative Frobenius error %.3e (bound %.1e)\n", int(fast),
                worst, kTolFp8);
  }
}

// Operands that are not 256-byte aligned (cuBLASLt's default assumption): the plan is made for the
// actual alignment (and cached apart from the aligned one), so the result is still right.
TEST(CublasLtGemm, LessAlignedOperandsUseTheirOwnPlan) {
  SKIP_WITHOUT_GPU();
  CublasLtGemm gemm;
  const int64_t M = 7, N = 136, K = 96;
  for (BlasType t : {BlasType::f16, BlasType::bf16, BlasType::fp8_e4m3}) {
    const bool fp8 = t == BlasType::fp8_e4m3;
    SCOPED_TRACE(cuda::blas_type_name(t));
    // element offsets: 1 (2-byte alignment) for f16/bf16, 16 bytes for FP8 (its minimum)
    const int64_t ox = fp8 ? 16 : 1, ow = fp8 ? 48 : 3, oy = fp8 ? 8 : 1;
    const auto xb = to_bf16(normal(static_cast<size_t>(M * K), 51, 1.0f));
    const auto wb = to_bf16(normal(static_cast<size_t>(N * K), 52, 1.0f));
    std::vector<double> xr(xb.size()), wr(wb.size());
    DeviceBuffer<uint16_t> dy(static_cast<size_t>(M * N + oy));
    std::vector<double> ref;
    for (int aligned = 1; aligned >= 0; --aligned) {
      const int64_t ax = aligned ? 0 : ox, aw = aligned ? 0 : ow, ay = aligned ? 0 : oy;
      uint16_t* y = dy.get() + ay;
      if (fp8) {
        DeviceBuffer<uint16_t> dxb(xb.size()), dwb(wb.size());
        DeviceBuffer<uint8_t> dqx(xb.size() + ax), dqw(wb.size() + aw);
        DeviceBuffer<float> dsx(1), dsw(1);
        dxb.upload(xb.data());
        dwb.upload(wb.data());
        cuda::quantize_fp8_per_tensor(dxb.get(), M * K, dqx.get() + ax, dsx.get(), nullptr);
        cuda::quantize_fp8_per_tensor(dwb.get(), N * K, dqw.get() + aw, dsw.get(), nullptr);
        const auto hx = quantize_host(xb), hw = quantize_host(wb);
        for (size_t i = 0; i < xr.size(); ++i) xr[i] = static_cast<double>(e4m3_decode(hx.codes[i])) * hx.scale;
        for (size_t i = 0; i < wr.size(); ++i) wr[i] = static_cast<double>(e4m3_decode(hw.codes[i])) * hw.scale;
        ref = reference(xr, wr, M, N, K);
        poison(dy);
        gemm.matmul(t, dqx.get() + ax, dqw.get() + aw, y, M, N, K, dsx.get(), dsw.get(), nullptr);
        SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
      } else {
        std::vector<uint16_t> xh(xb.size()), wh(wb.size());
        for (size_t i = 0; i < xb.size(); ++i) {
          const float f = bf16_decode(xb[i]);  // N(0, 1) BF16 values are exact in FP16 as well
          xh[i] = t == BlasType::bf16 ? xb[i] : fp16_encode(f);
          xr[i] = t == BlasType::bf16 ? bf16_decode(xh[i]) : fp16_decode(xh[i]);
        }
        for (size_t i = 0; i < wb.size(); ++i) {
          const float f = bf16_decode(wb[i]);
          wh[i] = t == BlasType::bf16 ? wb[i] : fp16_encode(f);
          wr[i] = t == BlasType::bf16 ? bf16_decode(wh[i]) : fp16_decode(wh[i]);
        }
        ref = reference(xr, wr, M, N, K);
        DeviceBuffer<uint16_t> dx(xh.size() + ax), dw(wh.size() + aw);
        SHARQ_CUDA_CHECK(cudaMemcpy(dx.get() + ax, xh.data(), xh.size() * 2, cudaMemcpyHostToDevice));
        SHARQ_CUDA_CHECK(cudaMemcpy(dw.get() + aw, wh.data(), wh.size() * 2, cudaMemcpyHostToDevice));
        poison(dy);
        gemm.matmul(t, dx.get() + ax, dw.get() + aw, y, M, N, K, nullptr, nullptr, nullptr);
        SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
      }
      std::vector<uint16_t> yh(static_cast<size_t>(M * N));
      SHARQ_CUDA_CHECK(cudaMemcpy(yh.data(), y, yh.size() * 2, cudaMemcpyDeviceToHost));
      const auto yf = decode16(yh, t != BlasType::f16);
      ASSERT_EQ(count_nonfinite(yf), 0u) << "aligned " << aligned;
      const double tol = t == BlasType::f16 ? kTolF16 : t == BlasType::bf16 ? kTolBf16 : kTolFp8;
      EXPECT_LE(rel_frobenius(yf, ref), tol) << "aligned " << aligned;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Argument checks: no CUDA call happens before them, so these run without a GPU. The pointers are
// never dereferenced: fake, suitably aligned addresses are enough.
TEST(CublasLtGemmArgs, ValidateRejectsBadArguments) {
  const auto* p = reinterpret_cast<const void*>(uintptr_t{0x10000});
  const auto* q = reinterpret_cast<const void*>(uintptr_t{0x20000});
  const auto* r = reinterpret_cast<const void*>(uintptr_t{0x30000});
  const auto* s = reinterpret_cast<const float*>(uintptr_t{0x40000});
  const auto* odd = reinterpret_cast<const void*>(uintptr_t{0x10001});
  const auto* a8 = reinterpret_cast<const void*>(uintptr_t{0x10008});
  using V = CublasLtGemm;
  for (BlasType t : {BlasType::f16, BlasType::bf16, BlasType::fp8_e4m3}) {
    EXPECT_NO_THROW(V::validate(t, p, q, r, 4, 16, 64, s, s));
    EXPECT_NO_THROW(V::validate(t, nullptr, nullptr, nullptr, 0, 16, 64, nullptr, nullptr));  // M == 0: no-op
    EXPECT_THROW(V::validate(t, p, q, r, -1, 16, 64, s, s), std::invalid_argument);
    EXPECT_THROW(V::validate(t, p, q, r, 4, 0, 64, s, s), std::invalid_argument);
    EXPECT_THROW(V::validate(t, p, q, r, 4, 16, 0, s, s), std::invalid_argument);
    EXPECT_THROW(V::validate(t, p, q, r, 4, -16, 64, s, s), std::invalid_argument);
    EXPECT_THROW(V::validate(t, nullptr, q, r, 4, 16, 64, s, s), std::invalid_argument);
    EXPECT_THROW(V::validate(t, p, nullptr, r, 4, 16, 64, s, s), std::invalid_argument);
    EXPECT_THROW(V::validate(t, p, q, nullptr, 4, 16, 64, s, s), std::invalid_argument);
    EXPECT_THROW(V::validate(t, odd, q, r, 4, 16, 64, s, s), std::invalid_argument);
  }
  // accumulate: the FP32 outputs only
  for (BlasType t : {BlasType::f16_f32out, BlasType::bf16_f32out})
    EXPECT_NO_THROW(V::validate(t, p, q, r, 4, 16, 64, nullptr, nullptr, true));
  for (BlasType t : {BlasType::f16, BlasType::bf16, BlasType::fp8_e4m3, BlasType::fp8_e4m3_rowwise})
    EXPECT_THROW(V::validate(t, p, q, r, 4, 16, 64, s, s, true), std::invalid_argument);
  // f16/bf16: scales are ignored, K need not be a multiple of 16, 2-byte alignment suffices.
  EXPECT_NO_THROW(V::validate(BlasType::bf16, a8, q, r, 3, 5, 7, nullptr, nullptr));
  // FP8: both scales, K % 16 == 0, 16-byte aligned operands.
  EXPECT_THROW(V::validate(BlasType::fp8_e4m3, p, q, r, 4, 16, 64, nullptr, s), std::invalid_argument);
  EXPECT_THROW(V::validate(BlasType::fp8_e4m3, p, q, r, 4, 16, 64, s, nullptr), std::invalid_argument);
  EXPECT_THROW(V::validate(BlasType::fp8_e4m3, p, q, r, 4, 16, 40, s, s), std::invalid_argument);
  EXPECT_THROW(V::validate(BlasType::fp8_e4m3, a8, q, r, 4, 16, 64, s, s), std::invalid_argument);
  EXPECT_THROW(V::validate(BlasType::fp8_e4m3, p, a8, r, 4, 16, 64, s, s), std::invalid_argument);
  EXPECT_THROW(V::validate(BlasType::fp8_e4m3, p, q, a8, 4, 16, 64, s, s), std::invalid_argument);
  EXPECT_THROW(V::validate(static_cast<BlasType>(9), p, q, r, 4, 16, 64, s, s), std::invalid_argument);
  try {
    V::validate(BlasType::fp8_e4m3, p, q, r, 4, 16, 40, s, s);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("K % 16"), std::string::npos) << e.what();
  }
}

TEST(CublasLtGemmArgs, BlasTypeNames) {
  EXPECT_STREQ(cuda::blas_type_name(BlasType::f16), "fp16");
  EXPECT_STREQ(cuda::blas_type_name(BlasType::bf16), "bf16");
  EXPECT_STREQ(cuda::blas_type_name(BlasType::fp8_e4m3), "fp8_e4m3");
}

TEST(QuantizeFp8PerTensorArgs, RejectsBadArgumentsBeforeAnyCudaCall) {
  auto* p = reinterpret_cast<void*>(uintptr_t{0x10000});
  auto* s = reinterpret_cast<float*>(uintptr_t{0x20000});
  EXPECT_THROW(cuda::quantize_fp8_per_tensor(p, -1, p, s, nullptr), std::invalid_argument);
  EXPECT_THROW(cuda::quantize_fp8_per_tensor(p, 8, p, nullptr, nullptr), std::invalid_argument);
  EXPECT_THROW(cuda::quantize_fp8_per_tensor(nullptr, 8, p, s, nullptr), std::invalid_argument);
  EXPECT_THROW(cuda::quantize_fp8_per_tensor(p, 8, nullptr, s, nullptr), std::invalid_argument);
  EXPECT_THROW(cuda::quantize_fp8_per_tensor(reinterpret_cast<void*>(uintptr_t{0x10001}), 8, p, s, nullptr),
               std::invalid_argument);
}

// matmul itself checks before touching the device (and M == 0 is a no-op).
TEST(CublasLtGemm, MatmulRejectsBadArgumentsOnTheDevice) {
  SKIP_WITHOUT_GPU();
  CublasLtGemm gemm;
  DeviceBuffer<uint8_t> x(64 * 48), w(64 * 48);
  DeviceBuffer<uint16_t> y(64 * 64);
  DeviceBuffer<float> sc(1);
  EXPECT_THROW(gemm.matmul(BlasType::fp8_e4m3, x.get(), w.get(), y.get(), 64, 64, 48, nullptr, sc.get(), nullptr),
               std::invalid_argument);
  EXPECT_THROW(gemm.matmul(BlasType::fp8_e4m3, x.get(), w.get(), y.get(), 64, 64, 40, sc.get(), sc.get(), nullptr),
               std::invalid_argument);
  EXPECT_THROW(gemm.matmul(BlasType::f16, nullptr, w.get(), y.get(), 4, 8, 16, nullptr, nullptr, nullptr),
               std::invalid_argument);
  EXPECT_NO_THROW(gemm.matmul(BlasType::f16, nullptr, nullptr, nullptr, 0, 8, 16, nullptr, nullptr, nullptr));
}

}  // namespace
