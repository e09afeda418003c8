// GPU linear layers (prep + FP4 GEMM) against the CPU Linear of the same scheme, on random and
// outlier-heavy inputs:
//   - exact SharQ: FP32 output within 1e-5 relative (Frobenius) of the CPU reference; BF16 output
//     within one BF16 rounding of it;
//   - merged SharQ: its deviation from the exact result is measured, printed and bounded far below
//     the FP4 error itself;
//   - NVFP4 W4A4 and W4A16 baselines: the same checks as exact SharQ.
// Both the decode (mma.sync, split-K) and the prefill (wgmma) kernels run. Label `gpu`.
#include "sharq/kernels/cuda/gpu_linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "../../support/test_inputs.h"
#include "sharq/kernels/cpu/linear.h"

namespace {

using namespace sharq;
using namespace sharq::cuda;

#define SKIP_WITHOUT_GPU() \
  if (device_count() == 0) GTEST_SKIP() << "no CUDA device: GPU test skipped"

struct Run {
  std::vector<float> y32;   // FP32 output
  std::vector<float> y16;   // BF16 output, decoded
};

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

struct Problem {
  int64_t M, N, K;
  std::vector<float> W, X;   // X already BF16-exact
  std::vector<uint16_t> Xb;  // its BF16 bits
};

Problem make_problem(int64_t M, int64_t N, int64_t K, uint64_t seed, bool outliers) {
  Problem p{M, N, K, {}, {}, {}};
  sharq_test::Rng rng(seed);
  p.W.resize(static_cast<size_t>(N * K));
  for (auto& v : p.W) v = static_cast<float>(rng.normal() * 0.02);
  std::vector<float> x = outliers ? sharq_test::outlier_heavy(M, K, seed + 1) : std::vector<float>(static_cast<size_t>(M * K));
  if (!outliers)
    for (auto& v : x) v = static_cast<float>(rng.normal());
  for (float v : x) {
    p.Xb.push_back(bf16_encode(v));
    p.X.push_back(bf16_decode(p.Xb.back()));
  }
  return p;
}

Run run_gpu(GpuScheme s, const Problem& p, const GpuLinearOptions& opt) {
  GpuLinear lin(s, p.W.data(), p.N, p.K, opt);
  DeviceBuffer<uint16_t> dx(p.Xb.size());
  dx.upload(p.Xb.data());
  DeviceBuffer<__nv_bfloat16> dy(static_cast<size_t>(p.M * p.N));
  DeviceBuffer<float> dy32(static_cast<size_t>(p.M * p.N));
  SHARQ_CUDA_CHECK(cudaMemset(dy.get(), 0xFF, dy.bytes()));   // poison: NaN everywhere
  SHARQ_CUDA_CHECK(cudaMemset(dy32.get(), 0xFF, dy32.bytes()));
  const auto* x = reinterpret_cast<const __nv_bfloat16*>(dx.get());
  lin.prepare(x, p.M, nullptr);
  lin.gemm(dy.get(), nullptr);
  lin.gemm(nullptr, nullptr, dy32.get());
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  Run r;
  r.y32 = dy32.to_host();
  const auto yb = dy.to_host();
  for (auto v : yb) {
    uint16_t b;
    std::memcpy(&b, &v, 2);
    r.y16.push_back(bf16_decode(b));
  }
  return r;
}

std::vector<float> run_cpu(const std::string& scheme, const Problem& p) {
  auto lin = Linear::create(parse_scheme(scheme), p.W.data(), p.N, p.K);
  return lin->forward(p.X, p.M);
}

void expect_close(const Run& g, const std::vector<float>& ref, double tol32, const char* what) {
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_FALSE(std::isnan(g.y32[i])) << what << ": unwritten or NaN output at " << i;
    ASSERT_FALSE(std::isnan(g.y16[i])) << what << ": unwritten or NaN BF16 output at " << i;
  }
  const double e32 = rel_l2(g.y32, ref);
  EXPECT_LE(e32, tol32) << what;
  // BF16 output: within one BF16 rounding (2^-8 relative) of the reference, plus the FP32 slack
  for (size_t i = 0; i < ref.size(); ++i) {
    const double tol = std::abs(ref[i]) * (0x1p-8 + 4 * tol32) + 1e-30;
    ASSERT_LE(std::abs(double(g.y16[i]) - ref[i]), tol + std::abs(ref[i] - g.y32[i])) << what << " at " << i;
  }
}

struct Shape { int64_t M, N, K; };

TEST(GpuLinear, ExactSharqMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  const Shape shapes[] = {{1, 256, 4096}, {8, 136, 256}, {16, 384, 96}, {33, 128, 1000}, {64, 512, 512},
                          {100, 256, 320}, {300, 384, 4096}};
  for (const auto& sh : shapes)
    for (bool outl : {false, true})
      for (MaskKind mk : {MaskKind::pair48, MaskKind::scalar24})
        for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor})
          for (Fp4GemmKernel kern : {Fp4GemmKernel::decode, Fp4GemmKernel::automatic}) {  // auto: small / prefill
            if (kern == Fp4GemmKernel::automatic && sh.N % 128 != 0) continue;  // = decode
            const auto p = make_problem(sh.M, sh.N, sh.K, ++seed, outl);
            std::string scheme = "sharq";
            scheme += mk == MaskKind::scalar24 ? ":s24" : ":p48";
            scheme += gs == GlobalScale::per_row ? ":token" : ":tensor";
            GpuLinearOptions opt{mk, gs, kern};
            SCOPED_TRACE(::testing::Message() << scheme << " M=" << sh.M << " N=" << sh.N << " K=" << sh.K
                                              << " outliers=" << outl << " kernel=" << static_cast<int>(kern));
            expect_close(run_gpu(GpuScheme::sharq_exact, p, opt), run_cpu(scheme, p), 1e-5, "sharq exact");
          }
}

TEST(GpuLinear, BaselinesMatchTheCpuReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  for (const Shape& sh : {Shape{1, 256, 4096}, Shape{16, 136, 200}, Shape{64, 256, 1024}, Shape{257, 384, 512}})
    for (Fp4GemmKernel kern : {Fp4GemmKernel::decode, Fp4GemmKernel::automatic})
      for (bool outl : {false, true}) {
        const auto p = make_problem(sh.M, sh.N, sh.K, ++seed, outl);
        GpuLinearOptions opt{MaskKind::pair48, GlobalScale::per_row, kern};
        SCOPED_TRACE(::testing::Message() << "M=" << sh.M << " N=" << sh.N << " K=" << sh.K << " kernel=" << static_cast<int>(kern));
        expect_close(run_gpu(GpuScheme::nvfp4, p, opt), run_cpu("nvfp4:token", p), 1e-5, "nvfp4");
        expect_close(run_gpu(GpuScheme::w4a16, p, opt), run_cpu("w4a16", p), 1e-5, "w4a16");
      }
}

// Merged mode rounds S^ + R^ once to FP16: measure how far that moves the output from the exact
// SharQ result, and compare with the FP4 error itself (SharQ exact vs the unquantized layer).
TEST(GpuLinear, MergedModeDeviationIsFarBelowTheFp4Error) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 300;
  double worst = 0;
  for (const Shape& sh : {Shape{1, 256, 4096}, Shape{16, 512, 4096}, Shape{64, 256, 1024}, Shape{512, 384, 4096},
                          Shape{1024, 384, 2048}})
    for (bool outl : {false, true})
      for (GlobalScale gs : {GlobalScale::per_row, GlobalScale::per_tensor}) {
        const auto p = make_problem(sh.M, sh.N, sh.K, ++seed, outl);
        GpuLinearOptions opt{MaskKind::pair48, gs, Fp4GemmKernel::automatic};
        const auto exact = run_gpu(GpuScheme::sharq_exact, p, opt);
        const auto merged = run_gpu(GpuScheme::sharq_merged, p, opt);
        const auto fp32 = run_cpu("fp32", p);
        const double dev = rel_l2(merged.y32, exact.y32), fp4 = rel_l2(exact.y32, fp32);
        worst = std::max(worst, dev);
        std::printf("merged vs exact (%s): M=%-4lld N=%-4lld K=%-5lld outliers=%d %s  deviation %.3e   FP4 error %.3e   ratio %.4f\n",
                    sh.M > 64 ? "wgmma prefill" : "wgmma small", static_cast<long long>(sh.M), static_cast<long long>(sh.N), static_cast<long long>(sh.K), outl,
                    gs == GlobalScale::per_row ? "token " : "tensor", dev, fp4, dev / fp4);
        EXPECT_LE(dev, 2e-3) << "merged deviation";
        EXPECT_LE(dev, 0.05 * fp4) << "merged deviation vs FP4 error";
      }
  std::printf("merged-mode worst deviation: %.3e\n", worst);
}

// The kernels decode W^ * 2^-7 (FP16) / W^ * 2^-8 (BF16) and undo it in the epilogue: rows whose
// block scales are the smallest UE4M3 codes then feed FP16 *subnormals* to the tensor cores. A flush
// to zero anywhere would zero those outputs; they must match the CPU element by element.
TEST(GpuLinear, TinyWeightRowsDecodeToExactSubnormals) {
  SKIP_WITHOUT_GPU();
  for (int64_t M : {4, 200}) {
    auto p = make_problem(M, 256, 512, 91, false);
    for (int64_t n = 8; n < 256; n += 2)  // every other row ~1e-5 of the largest: UE4M3 scales ~2^-9
      for (int64_t k = 0; k < p.K; ++k) p.W[static_cast<size_t>(n * p.K + k)] *= 5e-4f;
    p.W[0] = 4.0f;
    for (GpuScheme s : {GpuScheme::sharq_exact, GpuScheme::nvfp4, GpuScheme::w4a16}) {
      const auto g = run_gpu(s, p, GpuLinearOptions{});
      const auto ref = run_cpu(s == GpuScheme::w4a16 ? "w4a16" : s == GpuScheme::nvfp4 ? "nvfp4:token" : "sharq:token", p);
      int64_t nonzero = 0, total = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 8; n < 256; n += 2) {
          const size_t i = static_cast<size_t>(m * p.N + n);
          nonzero += ref[i] != 0.0f;
          ++total;
          ASSERT_NEAR(g.y32[i], ref[i], 1e-3 * std::abs(ref[i])) << gpu_scheme_name(s) << " M=" << M << " at " << m << "," << n;
        }
      EXPECT_GT(nonzero, total * 9 / 10) << "the tiny rows must not quantize to zero";
    }
  }
}

TEST(GpuLinear, NanInTheInputPoisonsOnlyItsRow) {
  SKIP_WITHOUT_GPU();
  auto p = make_problem(16, 256, 512, 77, true);
  p.Xb[3 * 512 + 10] = 0x7FC0;  // BF16 NaN in row 3
  p.X[3 * 512 + 10] = std::numeric_limits<float>::quiet_NaN();
  p.Xb[5 * 512 + 11] = 0x7F80;  // +Inf in row 5
  p.X[5 * 512 + 11] = std::numeric_limits<float>::infinity();
  for (GpuScheme s : {GpuScheme::sharq_exact, GpuScheme::sharq_merged, GpuScheme::nvfp4}) {
    const auto g = run_gpu(s, p, GpuLinearOptions{});
    const auto ref = run_cpu(s == GpuScheme::nvfp4 ? "nvfp4:token" : "sharq:token", p);
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) {
        const size_t i = static_cast<size_t>(m * p.N + n);
        ASSERT_EQ(std::isnan(g.y32[i]), std::isnan(ref[i])) << gpu_scheme_name(s) << " at " << m << "," << n;
        ASSERT_EQ(std::isnan(g.y32[i]), m == 3 || m == 5) << gpu_scheme_name(s) << " at " << m << "," << n;
      }
  }
}

TEST(Fp4Gemm, RejectsMisalignedOperandsBeforeLaunch) {
  SKIP_WITHOUT_GPU();
  std::vector<float> W(128 * 256, 0.25f);
  const auto w = DeviceFp4Weights::upload(pack_fp4_tiles(quantize_matrix<Nvfp4_32>(W.data(), 128, 256, GlobalScale::per_tensor)));
  DeviceBuffer<__half> a(4 * 256 + 8);
  DeviceBuffer<__nv_bfloat16> y(4 * 128 + 2);
  Fp4GemmArgs args;
  args.M = 4;
  args.lda = 256;
  args.ldy = 128;
  args.a0 = a.get() + 1;  // 2 bytes off
  args.y = y.get();
  try {
    fp4_gemm(args, w, Fp4GemmKernel::automatic, nullptr, 0, nullptr);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << e.what();
  }
  args.a0 = a.get();
  args.y = y.get() + 1;
  EXPECT_THROW(fp4_gemm(args, w, Fp4GemmKernel::automatic, nullptr, 0, nullptr), std::invalid_argument);
}

TEST(GpuLinear, RejectsBadShapesBeforeLaunch) {
  SKIP_WITHOUT_GPU();
  std::vector<float> W(12 * 64, 0.5f);
  EXPECT_THROW(GpuLinear(GpuScheme::sharq_exact, W.data(), 12, 64), std::invalid_argument);  // N % 8
  EXPECT_THROW(GpuLinear(GpuScheme::sharq_exact, nullptr, 8, 64), std::invalid_argument);
  std::vector<float> W2(8 * 64, 0.5f);
  GpuLinear lin(GpuScheme::sharq_exact, W2.data(), 8, 64);
  EXPECT_THROW(lin.prepare(nullptr, 4, nullptr), std::invalid_argument);
  GpuLinearOptions pre{MaskKind::pair48, GlobalScale::per_row, Fp4GemmKernel::prefill};
  GpuLinear lin2(GpuScheme::sharq_merged, W2.data(), 8, 64, pre);  // N = 8: no prefill kernel
  DeviceBuffer<uint16_t> dx(4 * 64);
  std::vector<uint16_t> hx(4 * 64, 0x3F80);
  dx.upload(hx.data());
  DeviceBuffer<__nv_bfloat16> dy(4 * 8);
  lin2.prepare(reinterpret_cast<const __nv_bfloat16*>(dx.get()), 4, nullptr);
  try {
    lin2.gemm(dy.get(), nullptr);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("N % 128"), std::string::npos) << e.what();
  }
}

}  // namespace
