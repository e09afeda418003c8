// The GPU linear API (GpuActivations + GpuLinear) for every GPU scheme, against the CPU Linear of the
// same scheme name, on random and outlier-heavy inputs:
//   - FP4 schemes (sharq exact / merged / w16, p48 / s24, token / tensor; nvfp4; w4a16): FP32 output
//     within 1e-5 relative (Frobenius) of the CPU reference; BF16 output within one BF16 rounding;
//     both kernel families (small for M <= 64, prefill above, and prefill forced at small M), any N;
//   - fp8: the activation codes and row scales bit-identical to the CPU quantizer, the output within
//     BF16 + FP8-accumulation tolerance; fp16 / bf16 through cuBLASLt likewise;
//   - batch invariance: with per-token scales a row's output is bit-identical for M = 1 .. 64 and
//     alone, and inside the prefill family for M = 65 .. 300 with batch_invariant (one split-K order);
//     per-tensor scales break it (asserted);
//   - CUDA-graph capture of prepare + gemm replays bit-identically to eager calls;
//   - one GpuActivations shared by two layers (q/k/v style) gives each layer's own forward();
//   - bad arguments throw before any launch, naming the problem.
// Label `gpu`.
#include "sharq/runtime/cuda/gpu_linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "../../support/gpu_test.h"
#include "../../support/error_metrics.h"
#include "../../support/exceptions.h"
#include "../../support/test_inputs.h"
#include "sharq/kernels/cuda/transformer_ops.h"
#include "sharq/quant/fp8.h"
#include "sharq/runtime/cpu/linear.h"

namespace {

using namespace sharq;
using namespace sharq::cuda;

struct GpuRun {
  std::vector<float> y32;   // FP32 output (FP4 schemes; else the 16-bit output decoded)
  std::vector<float> y16;   // BF16 / FP16 output, decoded
};

using sharq_test::rel_l2;

struct Problem {
  int64_t M, N, K;
  std::vector<float> W, X;   // X already exact in the activation type
  std::vector<uint16_t> Xb;  // its 16-bit pattern (BF16, or FP16 for the fp16 scheme)
};

Problem make_problem(int64_t M, int64_t N, int64_t K, uint64_t seed, bool outliers, bool fp16 = false) {
  Problem p{M, N, K, {}, {}, {}};
  sharq_test::Rng rng(seed);
  p.W.resize(static_cast<size_t>(N * K));
  for (auto& v : p.W) v = static_cast<float>(rng.normal() * 0.02);
  std::vector<float> x = outliers ? sharq_test::outlier_heavy(M, K, seed + 1) : std::vector<float>(static_cast<size_t>(M * K));
  if (!outliers)
    for (auto& v : x) v = static_cast<float>(rng.normal());
  for (float v : x) {
    p.Xb.push_back(fp16 ? fp16_encode(v) : bf16_encode(v));
    p.X.push_back(fp16 ? fp16_decode(p.Xb.back()) : bf16_decode(p.Xb.back()));
  }
  return p;
}

CublasLtGemm& blas() {
  static CublasLtGemm b;
  return b;
}

GpuRun run_gpu(const std::string& scheme, const Problem& p, GpuLinearOptions opt = {}) {
  const Scheme s = parse_scheme(scheme);
  opt.max_m = std::max<int64_t>(p.M, 1);
  GpuLinear lin(s, p.W.data(), p.N, p.K, opt, &blas());
  DeviceBuffer<uint16_t> dx(p.Xb.size());
  dx.upload(p.Xb.data());
  DeviceBuffer<uint16_t> dy(static_cast<size_t>(p.M * p.N));
  DeviceBuffer<float> dy32(static_cast<size_t>(p.M * p.N));
  SHARQ_CUDA_CHECK(cudaMemset(dy.get(), 0xFF, dy.bytes()));   // poison: NaN everywhere
  SHARQ_CUDA_CHECK(cudaMemset(dy32.get(), 0xFF, dy32.bytes()));
  lin.prepare(dx.get(), p.M, lin.own_activations(), nullptr);
  lin.gemm(lin.own_activations(), dy.get(), nullptr);
  const bool fp4 = s.is_fp4_weight();
  if (fp4) lin.gemm(lin.own_activations(), nullptr, nullptr, nullptr, dy32.get());
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  GpuRun r;
  for (uint16_t b : dy.to_host()) r.y16.push_back(act_dtype(s) == DType::f16 ? fp16_decode(b) : bf16_decode(b));
  r.y32 = fp4 ? dy32.to_host() : r.y16;
  return r;
}

std::vector<float> run_cpu(const std::string& scheme, const Problem& p) {
  auto lin = Linear::create(parse_scheme(scheme), p.W.data(), p.N, p.K);
  return lin->forward(p.X, p.M);
}

void expect_close(const GpuRun& g, const std::vector<float>& ref, double tol32, const std::string& what) {
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

TEST(GpuLinear, Fp4SchemesMatchTheCpuReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  const Shape shapes[] = {{1, 256, 4096}, {8, 136, 256}, {16, 384, 96}, {33, 128, 1000}, {64, 512, 512},
                          {100, 256, 320}, {300, 384, 4096}, {5, 200, 200}, {77, 1000, 384}};
  for (const auto& sh : shapes)
    for (bool outl : {false, true}) {
      const auto p = make_problem(sh.M, sh.N, sh.K, ++seed, outl);
      for (const char* sc : {"sharq", "sharq:s24", "sharq:tensor", "sharq:s24:tensor", "sharq:w16", "sharq:merged",
                             "sharq:merged:tensor", "sharq:l1", "nvfp4", "nvfp4:tensor", "w4a16"})
        for (Fp4GemmKernel kern : {Fp4GemmKernel::automatic, Fp4GemmKernel::prefill}) {
          if (kern == Fp4GemmKernel::prefill && sh.M > kSmallMaxM) continue;  // = automatic
          GpuLinearOptions opt;
          opt.kernel = kern;
          const std::string what = fmt::format("{} M={} N={} K={} outliers={} kernel={}", sc, sh.M, sh.N, sh.K, outl,
                                               to_string(kern));
          expect_close(run_gpu(sc, p, opt), run_cpu(sc, p), 1e-5, what);
          if (HasFatalFailure()) return;
        }
    }
}

TEST(GpuLinear, CublasSchemesMatchTheCpuReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 50;
  for (const Shape& sh : {Shape{1, 256, 4096}, Shape{16, 384, 512}, Shape{200, 256, 320}, Shape{7, 136, 1000},
                          Shape{9, 172, 64}, Shape{3, 13, 40}})  // N % 8 != 0, K % 16 != 0 (stories260K's w1/w3)
    for (bool outl : {false, true})
      for (const char* sc : {"fp16", "bf16", "fp8"}) {
        const auto p = make_problem(sh.M, sh.N, sh.K, ++seed, outl, std::string(sc) == "fp16");
        const std::string what = fmt::format("{} M={} N={} K={} outliers={}", sc, sh.M, sh.N, sh.K, outl);
        const GpuRun g = run_gpu(sc, p);
        const auto ref = run_cpu(sc, p);
        for (size_t i = 0; i < ref.size(); ++i) ASSERT_FALSE(std::isnan(g.y16[i])) << what << " at " << i;
        // 16-bit output rounding (2^-9 relative rms) + FP32 / FP8 tensor-core accumulation order
        EXPECT_LE(rel_l2(g.y16, ref), 4e-3) << what;
      }
}

// fp16 / bf16 at M <= gemv16_max_m run the 16-bit GEMV (gemv16.h): both it (at M = 1 .. 4) and cuBLASLt
// (gemv16_max_m 0, or gemm_cublas) within the CPU bound above, with and without a bias; prepare_norm / prepare_swiglu
// fuse the input into it: SwiGLU bit for bit the separate kernel followed by prepare + gemm, the
// norm within one 16-bit rounding of each input (another order of its sum of squares). M = 5 and a
// residual add are refused, as is cuBLASLt on fused activations.
TEST(GpuLinear, SixteenBitGemvServesSmallMWithFusedInputs) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 900;
  for (const char* sc : {"fp16", "bf16"}) {
    const bool f16 = std::string(sc) == "fp16";
    const DType t = f16 ? DType::f16 : DType::bf16;
    for (int64_t M = 1; M <= kGemv16MaxM; ++M) {
      const auto p = make_problem(M, 300, 1024, ++seed, true, f16);
      const auto ref = run_cpu(sc, p);
      GpuLinearOptions on, off;
      on.gemv16_max_m = kGemv16MaxM;
      off.gemv16_max_m = 0;
      const GpuRun g = run_gpu(sc, p, on), c = run_gpu(sc, p, off);
      const std::string what = fmt::format("{} M={}", sc, M);
      for (size_t i = 0; i < ref.size(); ++i) ASSERT_FALSE(std::isnan(g.y16[i])) << what << " at " << i;
      EXPECT_LE(rel_l2(g.y16, ref), 4e-3) << what << " GEMV";
      EXPECT_LE(rel_l2(c.y16, ref), 4e-3) << what << " cuBLASLt";
    }
    // the fused inputs, M = 3: gate/up output (M x 2K) and FP32 residual rows (M x K)
    const int64_t M = 3, N = 256, K = 1024;
    const auto p = make_problem(M, N, K, ++seed, false, f16);
    std::vector<uint16_t> gub;
    sharq_test::Rng rng(seed);
    for (int64_t i = 0; i < M * 2 * K; ++i) gub.push_back(f16 ? fp16_encode(float(2 * rng.normal())) : bf16_encode(float(2 * rng.normal())));
    std::vector<float> xr(static_cast<size_t>(M * K)), nw(static_cast<size_t>(K));
    for (auto& v : xr) v = static_cast<float>(3 * rng.laplace());
    for (auto& v : nw) v = static_cast<float>(0.5 + rng.uniform());
    DeviceBuffer<uint16_t> dgu(gub.size()), act(static_cast<size_t>(M * K)), y1(static_cast<size_t>(M * N)),
        y2(static_cast<size_t>(M * N));
    DeviceBuffer<float> dxr(xr.size()), dnw(nw.size());
    dgu.upload(gub.data());
    dxr.upload(xr.data());
    dnw.upload(nw.data());
    GpuLinearOptions opt;
    opt.max_m = 8;
    GpuLinear by_default(parse_scheme(sc), p.W.data(), N, K, opt, &blas());
    EXPECT_TRUE(by_default.gemv(1));
    EXPECT_FALSE(by_default.gemv(2)) << "gemv16_max_m is 1 by default";
    opt.gemv16_max_m = 5;
    EXPECT_THROW(GpuLinear(parse_scheme(sc), p.W.data(), N, K, opt, &blas()), std::invalid_argument);
    opt.gemv16_max_m = kGemv16MaxM;
    GpuLinear lin(parse_scheme(sc), p.W.data(), N, K, opt, &blas());
    GpuActivations& a = lin.own_activations();
    EXPECT_TRUE(lin.gemv(4));
    EXPECT_FALSE(lin.gemv(5));
    swiglu(dgu.get(), M, K, t, act.get(), nullptr);
    lin.prepare(act.get(), M, a, nullptr);
    lin.gemm(a, y1.get(), nullptr);
    lin.prepare_swiglu(dgu.get(), M, a, nullptr);
    EXPECT_THROW(lin.gemm_cublas(a, y2.get(), nullptr), std::invalid_argument) << sc << ": cuBLASLt on a fused input";
    lin.gemm(a, y2.get(), nullptr);
    EXPECT_EQ(y1.to_host(), y2.to_host()) << sc << " swiglu";
    const float eps = 1e-5f;
    rmsnorm_rows(dxr.get(), nullptr, nullptr, M, K, dnw.get(), eps, t, act.get(), nullptr);
    lin.prepare(act.get(), M, a, nullptr);
    lin.gemm(a, y1.get(), nullptr);
    lin.prepare_norm(dxr.get(), nullptr, dnw.get(), eps, M, nullptr, a, nullptr);
    lin.gemm(a, y2.get(), nullptr);
    const auto h1 = y1.to_host(), h2 = y2.to_host();
    std::vector<float> f1, f2;
    for (size_t i = 0; i < h1.size(); ++i) {
      f1.push_back(f16 ? fp16_decode(h1[i]) : bf16_decode(h1[i]));
      f2.push_back(f16 ? fp16_decode(h2[i]) : bf16_decode(h2[i]));
    }
    EXPECT_LE(rel_l2(f2, f1), f16 ? 2e-3 : 1.6e-2) << sc << " rmsnorm";
    EXPECT_THROW(lin.prepare_norm(dxr.get(), nullptr, dnw.get(), eps, 5, nullptr, a, nullptr), std::invalid_argument);
    EXPECT_THROW(lin.prepare_norm(dxr.get(), act.get(), dnw.get(), eps, M, dxr.get() + 1, a, nullptr),
                 std::invalid_argument) << sc << ": a residual add";
    EXPECT_THROW(lin.prepare_swiglu(dgu.get(), 5, a, nullptr), std::invalid_argument);
  }
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
}

// The fp8 scheme's activation quantization on the GPU is the CPU's (quant/fp8.h), bit for bit.
TEST(GpuLinear, Fp8ActivationCodesAreTheCpuQuantizer) {
  SKIP_WITHOUT_GPU();
  for (const Shape& sh : {Shape{1, 128, 4096}, Shape{37, 128, 1000}, Shape{5, 128, 33}}) {
    auto p = make_problem(sh.M, sh.N, sh.K, 5 + sh.K, true);
    if (sh.M > 2) {  // a zero row, a NaN and an Inf
      for (int64_t k = 0; k < sh.K; ++k) p.Xb[static_cast<size_t>(1 * sh.K + k)] = 0;
      p.Xb[static_cast<size_t>(2 * sh.K + 3)] = 0x7FC0;
      p.Xb[static_cast<size_t>(2 * sh.K + 4)] = 0xFF80;
    }
    GpuLinearOptions opt;
    opt.max_m = sh.M;
    GpuLinear lin(parse_scheme("fp8"), p.W.data(), p.N, p.K, opt, &blas());
    DeviceBuffer<uint16_t> dx(p.Xb.size());
    dx.upload(p.Xb.data());
    lin.prepare(dx.get(), sh.M, lin.own_activations(), nullptr);
    const auto h = lin.own_activations().to_host();
    ASSERT_EQ(h.row_scale.size(), static_cast<size_t>(sh.M));
    for (int64_t m = 0; m < sh.M; ++m) {
      std::vector<float> row(static_cast<size_t>(sh.K));
      for (int64_t k = 0; k < sh.K; ++k) row[static_cast<size_t>(k)] = bf16_decode(p.Xb[static_cast<size_t>(m * sh.K + k)]);
      const float s = fp8_scale_from_amax(amax_finite(row.data(), static_cast<int>(sh.K)));
      ASSERT_EQ(h.row_scale[static_cast<size_t>(m)], s) << "row " << m;
      for (int64_t k = 0; k < sh.K; ++k)
        ASSERT_EQ(h.codes[static_cast<size_t>(m * h.ld + k)], fp8_quantize_value(row[static_cast<size_t>(k)], s))
            << "row " << m << " col " << k;
      for (int64_t k = sh.K; k < h.ld; ++k) ASSERT_EQ(h.codes[static_cast<size_t>(m * h.ld + k)], 0) << "padding";
    }
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
        const bool tensor = gs == GlobalScale::per_tensor;
        const auto exact = run_gpu(tensor ? "sharq:tensor" : "sharq", p);
        const auto merged = run_gpu(tensor ? "sharq:merged:tensor" : "sharq:merged", p);
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
    for (const char* s : {"sharq", "nvfp4", "w4a16"}) {
      const auto g = run_gpu(s, p);
      const auto ref = run_cpu(s, p);
      int64_t nonzero = 0, total = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 8; n < 256; n += 2) {
          const size_t i = static_cast<size_t>(m * p.N + n);
          nonzero += ref[i] != 0.0f;
          ++total;
          ASSERT_NEAR(g.y32[i], ref[i], 1e-3 * std::abs(ref[i])) << s << " M=" << M << " at " << m << "," << n;
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
  for (const char* s : {"sharq", "sharq:merged", "nvfp4", "fp8"}) {
    const auto g = run_gpu(s, p);
    const auto ref = run_cpu(s, p);
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n) {
        const size_t i = static_cast<size_t>(m * p.N + n);
        ASSERT_EQ(std::isnan(g.y32[i]), std::isnan(ref[i])) << s << " at " << m << "," << n;
        ASSERT_EQ(std::isnan(g.y32[i]), m == 3 || m == 5) << s << " at " << m << "," << n;
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
    fp4_gemm(args, w, nullptr, 0, nullptr);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << e.what();
  }
  args.a0 = a.get();
  args.y = reinterpret_cast<__nv_bfloat16*>(reinterpret_cast<uint8_t*>(y.get()) + 1);  // odd address
  EXPECT_THROW(fp4_gemm(args, w, nullptr, 0, nullptr), std::invalid_argument);
}

// MXFP4 tiles (UE8M0 scales) share the layout but no GPU GEMM decodes them yet: the upload refuses
// them before touching the device (this runs without a GPU too), where it would otherwise read
// every scale byte as UE4M3.
TEST(Fp4Gemm, RefusesMxfp4TilesBeforeAnyDeviceCall) {
  std::vector<float> W(128 * 256);
  for (size_t i = 0; i < W.size(); ++i) W[i] = static_cast<float>((i * 37) % 19) - 9.0f;
  const Fp4Tiles t = pack_fp4_tiles(quantize_matrix<Mxfp4>(W.data(), 128, 256, GlobalScale::none));
  ASSERT_EQ(t.scale, Fp4Scale::ue8m0);
  try {
    (void)DeviceFp4Weights::upload(t);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("MXFP4"), std::string::npos) << e.what();
  }
}

TEST(GpuLinear, RejectsBadArgumentsBeforeLaunch) {
  SKIP_WITHOUT_GPU();
  std::vector<float> W(12 * 64, 0.5f);
  auto what = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "<no exception>";
  };
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("mxfp4"), W.data(), 12, 64); }).find("mxfp4"), std::string::npos);
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("sharq:nm2_8"), W.data(), 12, 64); }).find("N:M"), std::string::npos);
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("fp32"), W.data(), 12, 64); }).find("fp32"), std::string::npos);
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("bf16"), W.data(), 12, 64); }).find("cuBLASLt"), std::string::npos);
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("sharq"), nullptr, 8, 64); }), "<no exception>");
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("sharq"), W.data(), 0, 64); }), "<no exception>");
  GpuLinearOptions small;
  small.max_m = 4;
  GpuLinear lin(parse_scheme("sharq"), W.data(), 12, 64, small);  // any N works (padded to 128)
  DeviceBuffer<uint16_t> dx(8 * 64);
  EXPECT_NE(what([&] { lin.prepare(nullptr, 4, lin.own_activations(), nullptr); }), "<no exception>");
  EXPECT_NE(what([&] { lin.prepare(dx.get(), 5, lin.own_activations(), nullptr); }).find("max_m"), std::string::npos);
  GpuActivations other(parse_scheme("nvfp4"), 64, 4);
  EXPECT_NE(what([&] { lin.prepare(dx.get(), 2, other, nullptr); }).find("nvfp4"), std::string::npos);
  GpuActivations other_k(parse_scheme("sharq"), 96, 4);
  EXPECT_NE(what([&] { lin.gemm(other_k, dx.get(), nullptr); }).find("K = 96"), std::string::npos);
  GpuLinearOptions forced = small;
  forced.max_m = 65;
  forced.kernel = Fp4GemmKernel::small;
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("sharq"), W.data(), 12, 64, forced); }).find("M <= 64"), std::string::npos);
  GpuLinearOptions shared = small;
  shared.own_scratch = false;
  GpuLinear lin2(parse_scheme("sharq"), W.data(), 12, 64, shared);
  EXPECT_NE(what([&] { lin2.forward(dx.get(), 1, dx.get(), nullptr); }).find("own_scratch"), std::string::npos);
  const Fp4Tiles t16 = pack_fp4_tiles(quantize_matrix<Nvfp4_16>(W.data(), 12, 64, GlobalScale::per_tensor));
  EXPECT_NE(what([&] { GpuLinear(parse_scheme("sharq"), t16); }).find("NVFP4-32"), std::string::npos);
  GpuLinear from_tiles(parse_scheme("sharq:w16"), t16);  // the right block: fine
  EXPECT_EQ(from_tiles.N(), 12);
  // gemm_accumulate: fp16 / bf16 layers without a bias only (the engine falls back to the norm kernel's add)
  const std::vector<float> bias(12, 0.25f);
  GpuLinear plain16(parse_scheme("bf16"), W.data(), 12, 64, small, &blas());
  GpuLinear biased16(parse_scheme("bf16"), W.data(), 12, 64, small, &blas(), bias.data());
  EXPECT_TRUE(plain16.accumulates());
  EXPECT_FALSE(biased16.accumulates());
  EXPECT_FALSE(lin.accumulates());
  DeviceBuffer<float> rows(4 * 12);
  biased16.prepare(dx.get(), 2, biased16.own_activations(), nullptr);
  EXPECT_NE(what([&] { biased16.gemm_accumulate(biased16.own_activations(), rows.get(), nullptr); }).find("bias"),
            std::string::npos);
  lin.prepare(dx.get(), 2, lin.own_activations(), nullptr);
  EXPECT_NE(what([&] { lin.gemm_accumulate(lin.own_activations(), rows.get(), nullptr); }).find("bias"),
            std::string::npos);
  plain16.prepare(dx.get(), 2, plain16.own_activations(), nullptr);
  EXPECT_NE(what([&] { plain16.gemm_accumulate(plain16.own_activations(), nullptr, nullptr); }).find("null"),
            std::string::npos);
}

// q/k/v biases (Qwen2): added after the GEMM's own 16-bit rounding, so within one more rounding of
// the CPU Linear (which adds the bias in FP32); the FP32 test output carries it exactly.
TEST(GpuLinear, BiasMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 880;
  for (const Shape& sh : {Shape{3, 200, 320}, Shape{70, 384, 512}})
    for (const char* sc : {"sharq", "sharq:merged", "nvfp4", "w4a16", "fp8", "bf16", "fp16"}) {
      const auto p = make_problem(sh.M, sh.N, sh.K, ++seed, true, std::string(sc) == "fp16");
      std::vector<float> bias(static_cast<size_t>(sh.N));
      sharq_test::Rng rng(seed);
      for (auto& b : bias) b = static_cast<float>(rng.normal());
      const Scheme s = parse_scheme(sc);
      GpuLinearOptions opt;
      opt.max_m = sh.M;
      GpuLinear lin(s, p.W.data(), sh.N, sh.K, opt, &blas(), bias.data());
      DeviceBuffer<uint16_t> dx(p.Xb.size()), dy(static_cast<size_t>(sh.M * sh.N));
      dx.upload(p.Xb.data());
      lin.forward(dx.get(), sh.M, dy.get(), nullptr);
      std::vector<float> y;
      for (uint16_t b : dy.to_host()) y.push_back(act_dtype(s) == DType::f16 ? fp16_decode(b) : bf16_decode(b));
      const auto ref = Linear::create(s, p.W.data(), sh.N, sh.K, bias.data())->forward(p.X, sh.M);
      EXPECT_LE(rel_l2(y, ref), s.is_fp4_weight() ? 6e-3 : 8e-3) << sc << " M=" << sh.M;
      if (s.is_fp4_weight()) {  // FP32 output: the bias exactly, no 16-bit rounding
        DeviceBuffer<float> y32(static_cast<size_t>(sh.M * sh.N));
        lin.gemm(lin.own_activations(), nullptr, nullptr, nullptr, y32.get());
        EXPECT_LE(rel_l2(y32.to_host(), ref), 1e-5) << sc << " M=" << sh.M << " (FP32 output)";
      }
    }
}

// ---- batch invariance ------------------------------------------------------------------------------
// Bits of each output row of a run over rows [0, M) of X.
std::vector<std::vector<uint16_t>> rows_of(GpuLinear& lin, const DeviceBuffer<uint16_t>& dx, int64_t M, int64_t N) {
  DeviceBuffer<uint16_t> dy(static_cast<size_t>(M * N));
  lin.forward(dx.get(), M, dy.get(), nullptr);
  const auto h = dy.to_host();
  std::vector<std::vector<uint16_t>> out;
  for (int64_t m = 0; m < M; ++m) out.emplace_back(h.begin() + m * N, h.begin() + (m + 1) * N);
  return out;
}

TEST(GpuLinear, PerTokenOutputRowsDoNotDependOnTheBatch) {
  SKIP_WITHOUT_GPU();
  for (const Shape& sh : {Shape{0, 256, 4096}, Shape{0, 4096, 14336}, Shape{0, 200, 320}}) {
    const int64_t N = sh.N, K = sh.K;
    const auto p = make_problem(300, N, K, 1234 + N, true);
    DeviceBuffer<uint16_t> dx(p.Xb.size());
    dx.upload(p.Xb.data());
    for (const char* sc : {"sharq", "sharq:s24", "sharq:merged", "sharq:w16", "nvfp4", "w4a16"}) {
      SCOPED_TRACE(fmt::format("{} N={} K={}", sc, N, K));
      GpuLinearOptions opt;
      opt.max_m = 300;
      opt.batch_invariant = true;  // the prefill family's split count would follow M otherwise
      GpuLinear lin(parse_scheme(sc), p.W.data(), N, K, opt);
      // small family: every row of every M = 1 .. 64 equals that row alone (M = 1)
      std::vector<std::vector<uint16_t>> alone;
      for (int64_t r = 0; r < kSmallMaxM; ++r) {
        DeviceBuffer<uint16_t> d1(static_cast<size_t>(K)), y1(static_cast<size_t>(N));
        SHARQ_CUDA_CHECK(cudaMemcpy(d1.get(), dx.get() + r * K, K * 2, cudaMemcpyDeviceToDevice));
        lin.forward(d1.get(), 1, y1.get(), nullptr);
        alone.push_back(y1.to_host());
      }
      int differ = 0;
      for (int64_t M = 1; M <= kSmallMaxM; ++M) {
        const auto rows = rows_of(lin, dx, M, N);
        for (int64_t r = 0; r < M; ++r) differ += rows[static_cast<size_t>(r)] != alone[static_cast<size_t>(r)];
      }
      EXPECT_EQ(differ, 0) << "rows whose bits changed with the batch size (small family)";
      // prefill family: the rows of M = 65, 100, 129, 256 equal those of M = 300
      const auto big = rows_of(lin, dx, 300, N);
      differ = 0;
      for (int64_t M : {65, 100, 129, 256}) {
        const auto rows = rows_of(lin, dx, M, N);
        for (int64_t r = 0; r < M; ++r) differ += rows[static_cast<size_t>(r)] != big[static_cast<size_t>(r)];
      }
      EXPECT_EQ(differ, 0) << "rows whose bits changed with the batch size (prefill family)";
    }
  }
}

// Per-tensor g_x is batch-dependent by definition: an outlier row elsewhere in the batch changes
// row 0's scale and so its output.
TEST(GpuLinear, PerTensorScaleMakesRowsDependOnTheBatch) {
  SKIP_WITHOUT_GPU();
  auto p = make_problem(8, 256, 512, 4321, false);
  for (int64_t k = 0; k < 512; k += 3) p.Xb[static_cast<size_t>(5 * 512 + k)] = bf16_encode(3000.0f);
  DeviceBuffer<uint16_t> dx(p.Xb.size());
  dx.upload(p.Xb.data());
  for (const char* sc : {"sharq:tensor", "nvfp4:tensor"}) {
    GpuLinearOptions opt;
    opt.max_m = 8;
    GpuLinear lin(parse_scheme(sc), p.W.data(), 256, 512, opt);
    const auto one = rows_of(lin, dx, 1, 256), eight = rows_of(lin, dx, 8, 256);
    EXPECT_NE(one[0], eight[0]) << sc << ": row 0 should change with the outlier row in the batch";
  }
}

// ---- CUDA graphs ---------------------------------------------------------------------------------
TEST(GpuLinear, CapturedGraphReplaysBitIdentically) {
  SKIP_WITHOUT_GPU();
  cudaStream_t st;
  SHARQ_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (const char* sc : {"sharq", "sharq:merged", "sharq:tensor", "nvfp4", "w4a16", "fp8", "bf16"})
    for (int64_t M : {3, 16, 200}) {
      SCOPED_TRACE(fmt::format("{} M={}", sc, M));
      const int64_t N = 384, K = 1000;
      const auto p1 = make_problem(M, N, K, 77 + M, true), p2 = make_problem(M, N, K, 99 + M, false);
      GpuLinearOptions opt;
      opt.max_m = 256;
      GpuLinear lin(parse_scheme(sc), p1.W.data(), N, K, opt, &blas());
      DeviceBuffer<uint16_t> dx(p1.Xb.size()), dy(static_cast<size_t>(M * N)), ref(static_cast<size_t>(M * N));
      // eager reference on input 2
      dx.upload(p2.Xb.data());
      lin.forward(dx.get(), M, ref.get(), st);
      SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));
      const auto want = ref.to_host();
      // capture with input 1 in the buffer, then replay after overwriting it with input 2
      dx.upload(p1.Xb.data());
      cudaGraph_t graph;
      SHARQ_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      lin.forward(dx.get(), M, dy.get(), st);
      SHARQ_CUDA_CHECK(cudaStreamEndCapture(st, &graph));
      cudaGraphExec_t exec;
      SHARQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      dx.upload(p2.Xb.data());
      SHARQ_CUDA_CHECK(cudaMemset(dy.get(), 0xFF, dy.bytes()));
      SHARQ_CUDA_CHECK(cudaGraphLaunch(exec, st));
      SHARQ_CUDA_CHECK(cudaStreamSynchronize(st));
      EXPECT_EQ(dy.to_host(), want);
      SHARQ_CUDA_CHECK(cudaGraphExecDestroy(exec));
      SHARQ_CUDA_CHECK(cudaGraphDestroy(graph));
    }
  SHARQ_CUDA_CHECK(cudaStreamDestroy(st));
}

// q/k/v style: one GpuActivations prepared once, read by two layers of the same scheme and K.
TEST(GpuLinear, SharedActivationsServeSeveralLayers) {
  SKIP_WITHOUT_GPU();
  const auto p = make_problem(12, 256, 512, 555, true);
  const auto q = make_problem(12, 384, 512, 556, true);
  GpuLinearOptions shared;
  shared.max_m = 16;
  shared.own_scratch = false;
  const Scheme s = parse_scheme("sharq");
  GpuLinear a(s, p.W.data(), 256, 512, shared), b(s, q.W.data(), 384, 512, shared);
  GpuLinearOptions own;
  own.max_m = 16;
  GpuLinear a2(s, p.W.data(), 256, 512, own), b2(s, q.W.data(), 384, 512, own);
  DeviceBuffer<uint16_t> dx(p.Xb.size()), ya(12 * 256), yb(12 * 384), ya2(12 * 256), yb2(12 * 384);
  dx.upload(p.Xb.data());
  GpuActivations acts(s, 512, 16);
  DeviceBuffer<uint8_t> ws(std::max(a.workspace_bytes(), b.workspace_bytes()) + 16);
  a.prepare(dx.get(), 12, acts, nullptr);
  a.gemm(acts, ya.get(), nullptr, ws.get());
  b.gemm(acts, yb.get(), nullptr, ws.get());
  a2.forward(dx.get(), 12, ya2.get(), nullptr);
  b2.forward(dx.get(), 12, yb2.get(), nullptr);
  EXPECT_EQ(ya.to_host(), ya2.to_host());
  EXPECT_EQ(yb.to_host(), yb2.to_host());
}

// The MoE experts' path: rows of a prepared input gathered into a permuted one (repeats included),
// then two layers each on its own row range (gemm_rows). Every output row is bit-identical to a
// plain prepare + gemm of the same X row; so is each range to the whole gathered input's rows. Where
// the scheme keeps no per-row prepared input (fp16, bf16, w4a16 on X itself, per-tensor scales),
// gather() refuses, and gemm_rows still serves row ranges (not parts of a per-tensor input).
TEST(GpuLinear, GatheredRowsAndRowRangesMatchThePlainGemm) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 40, N = 256, K = 640;  // K % 128 != 0: w4a16 keeps a padded copy (gathers)
  const std::vector<int32_t> perm = {3, 0, 39, 7, 7, 12, 5, 1, 20, 33, 2, 38, 9, 9, 9, 17, 26, 4, 30, 11, 0, 22};
  const int64_t P = static_cast<int64_t>(perm.size()), split = 9;  // layer a: rows 0 .. 8, layer b: 9 .. P-1
  for (const char* sc : {"sharq", "sharq:merged", "nvfp4", "fp8", "w4a16", "bf16", "fp16", "sharq:tensor"}) {
    SCOPED_TRACE(sc);
    const Scheme s = parse_scheme(sc);
    const bool fp16 = s.kind == SchemeKind::fp16;
    const auto pa = make_problem(M, N, K, 901, true, fp16), pb = make_problem(M, N, K, 902, true, fp16);
    GpuLinearOptions opt;
    opt.max_m = 64;
    GpuLinear a(s, pa.W.data(), N, K, opt, &blas()), b(s, pb.W.data(), N, K, opt, &blas());
    // the permuted X rows, prepared as a whole: the reference
    std::vector<uint16_t> xp;
    for (int32_t r : perm) xp.insert(xp.end(), pa.Xb.begin() + r * K, pa.Xb.begin() + (r + 1) * K);
    DeviceBuffer<uint16_t> dx(pa.Xb.size()), dxp(xp.size()), y_ref(static_cast<size_t>(P * N)), y(static_cast<size_t>(P * N));
    DeviceBuffer<int32_t> drows(perm.size());
    dx.upload(pa.Xb.data());
    dxp.upload(xp.data());
    drows.upload(perm.data());
    GpuActivations whole(s, K, 64), permuted(s, K, 64);
    // each range's rows prepared alone (the same M as its gemm_rows: cuBLASLt picks by M)
    a.prepare(dxp.get(), split, whole, nullptr);
    a.gemm(whole, y_ref.get(), nullptr);
    b.prepare(dxp.get() + split * K, P - split, whole, nullptr);
    b.gemm(whole, y_ref.get() + split * N, nullptr);
    const std::vector<uint16_t> ref = y_ref.to_host();
    const bool per_tensor = s.has_act_global_scale() && s.act_scale == GlobalScale::per_tensor;
    if (permuted.gathers()) {
      GpuActivations src(s, K, 64);
      a.prepare(dx.get(), M, src, nullptr);
      permuted.gather(src, drows.get(), P, nullptr);
    } else {
      EXPECT_NE(sharq_test::what_of([&] { permuted.gather(whole, drows.get(), P, nullptr); }).find("no per-row prepared input"),
                std::string::npos);
      a.prepare(dxp.get(), P, permuted, nullptr);
    }
    if (per_tensor) {  // one amax over the whole input: only the whole input's rows
      EXPECT_NE(sharq_test::what_of([&] { a.gemm_rows(permuted, 0, split, y.get(), nullptr); }).find("per-tensor"),
                std::string::npos);
      continue;
    }
    SHARQ_CUDA_CHECK(cudaMemset(y.get(), 0xFF, y.bytes()));
    a.gemm_rows(permuted, 0, split, y.get(), nullptr);
    b.gemm_rows(permuted, split, P - split, y.get() + split * N, nullptr);
    const std::vector<uint16_t> got = y.to_host();
    if (s.is_fp4_weight()) {  // the FP4 families: bit for bit (their row results do not depend on M)
      for (int64_t r = 0; r < P; ++r)
        ASSERT_TRUE(std::equal(got.begin() + r * N, got.begin() + (r + 1) * N, ref.begin() + r * N)) << "row " << r;
    } else {  // cuBLASLt: another pointer, perhaps another algorithm; within a 16-bit rounding
      std::vector<float> g, e;
      for (size_t i = 0; i < got.size(); ++i) {
        g.push_back(fp16 ? fp16_decode(got[i]) : bf16_decode(got[i]));
        e.push_back(fp16 ? fp16_decode(ref[i]) : bf16_decode(ref[i]));
      }
      EXPECT_LE(rel_l2(g, e), 4e-3);
    }
    // a repeated row's output equals its first occurrence (rows 3 and 4: X row 7), and a range past the end is refused
    EXPECT_TRUE(std::equal(got.begin() + 3 * N, got.begin() + 4 * N, got.begin() + 4 * N));
    EXPECT_NE(sharq_test::what_of([&] { a.gemm_rows(permuted, P - 2, 3, y.get(), nullptr); }).find("of a prepared input of"),
              std::string::npos);
  }
}

}  // namespace

// ---- the split-K reduction's epilogues -------------------------------------------------------------
// SwiGLU and the residual add + RMSNorm computed inside the small family's split-K reduction against
// the separate transformer_ops kernels run on the plain output: SwiGLU and the updated residual
// bit for bit; the normed rows within one BF16 rounding (the sum of squares is added in another
// order), almost all bit for bit. A row's fused result does not depend on the batch.
TEST(GpuLinear, ReductionEpiloguesMatchTheSeparateKernels) {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t N, K; int splits; };
  // The norm's shapes (256 threads, up to 8 CTAs, Q quads per CTA, V per thread): (4096, 4096) with
  // the automatic split count (8), 4 CTAs of one quad per thread; 512: one CTA, no cluster; 2056:
  // 3 CTAs, the last one short (172 + 172 + 170 quads); 12008: 8 CTAs of two quads per thread, the
  // last one short; 20000: 8 CTAs of 625 quads (V = 4)
  for (const Case& cs : {Case{4096, 4096, 0}, Case{512, 1024, 2}, Case{2056, 2048, 3}, Case{12008, 512, 4},
                         Case{20000, 512, 4}})
    for (const char* sc : {"w4a16", "nvfp4", "sharq"}) {
      const int64_t N = cs.N, K = cs.K, maxM = 64;
      SCOPED_TRACE(fmt::format("{} N={} K={} splits={}", sc, N, K, cs.splits));
      const auto p = make_problem(maxM, N, K, 4242 + N, true);
      GpuLinearOptions opt;
      opt.max_m = maxM;
      opt.splits = cs.splits;
      GpuLinear lin(parse_scheme(sc), p.W.data(), N, K, opt);
      ASSERT_TRUE(lin.fuses(Fp4Epilogue::swiglu, 1));
      ASSERT_TRUE(lin.fuses(Fp4Epilogue::add_rmsnorm, maxM));
      DeviceBuffer<uint16_t> dx(p.Xb.size());
      dx.upload(p.Xb.data());
      sharq_test::Rng rng(99 + N);
      std::vector<float> x0(static_cast<size_t>(maxM * N)), w(static_cast<size_t>(N));
      for (auto& v : x0) v = static_cast<float>(rng.normal());
      for (auto& v : w) v = static_cast<float>(1.0 + 0.1 * rng.normal());
      DeviceBuffer<float> dw(w.size()), xa(x0.size()), xb(x0.size());
      dw.upload(w.data());
      const float eps = 1e-5f;
      std::vector<uint16_t> h_row0;  // the fused norm's row 0 at M = 1
      for (int64_t M : {1, 5, 64}) {
        SCOPED_TRACE(fmt::format("M={}", M));
        DeviceBuffer<uint16_t> y(static_cast<size_t>(M * N)), s_ref(static_cast<size_t>(M * N / 2)),
            s_fused(static_cast<size_t>(M * N / 2)), h_ref(static_cast<size_t>(M * N)), h_fused(static_cast<size_t>(M * N));
        SHARQ_CUDA_CHECK(cudaMemset(s_fused.get(), 0xFF, s_fused.bytes()));
        SHARQ_CUDA_CHECK(cudaMemset(h_fused.get(), 0xFF, h_fused.bytes()));
        xa.upload(x0.data());
        xb.upload(x0.data());
        GpuActivations& acts = lin.own_activations();
        lin.prepare(dx.get(), M, acts, nullptr);
        lin.gemm(acts, y.get(), nullptr);
        swiglu(y.get(), M, N / 2, DType::bf16, s_ref.get(), nullptr);
        add_rmsnorm(xa.get(), y.get(), M, N, dw.get(), eps, DType::bf16, h_ref.get(), nullptr);
        lin.gemm(acts, GpuLinear::Epilogue{Fp4Epilogue::swiglu}, s_fused.get(), nullptr);
        lin.gemm(acts, GpuLinear::Epilogue{Fp4Epilogue::add_rmsnorm, xb.get(), dw.get(), eps}, h_fused.get(), nullptr);
        SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
        EXPECT_EQ(s_fused.to_host(), s_ref.to_host()) << "SwiGLU";
        EXPECT_EQ(xb.to_host(), xa.to_host()) << "the residual sum";
        const auto hr = h_ref.to_host(), hf = h_fused.to_host();
        int64_t differ = 0;
        for (size_t i = 0; i < hr.size(); ++i) {
          const float a = bf16_decode(hr[i]), b = bf16_decode(hf[i]);
          ASSERT_FALSE(std::isnan(b)) << "unwritten normed output at " << i;
          ASSERT_LE(std::abs(a - b), std::abs(a) * 0x1p-7f) << "normed output at " << i;
          differ += hr[i] != hf[i];
        }
        EXPECT_LE(differ, static_cast<int64_t>(hr.size()) / 1000 + 2) << "normed outputs off by one rounding";
        if (M == 1) h_row0 = hf;
        else EXPECT_TRUE(std::equal(h_row0.begin(), h_row0.end(), hf.begin())) << "row 0 changed with the batch";
      }
    }
}

TEST(GpuLinear, ReductionEpiloguesAreRefusedWhereTheyCannotFuse) {
  SKIP_WITHOUT_GPU();
  const auto p = make_problem(100, 512, 1024, 31, false);
  GpuLinearOptions opt;
  opt.max_m = 100;
  GpuLinear one_split(parse_scheme("w4a16"), p.W.data(), 512, 1024, [&] { auto o = opt; o.splits = 1; return o; }());
  EXPECT_FALSE(one_split.fuses(Fp4Epilogue::add_rmsnorm, 1)) << "no split-K reduction to fuse into";
  opt.splits = 2;
  GpuLinear lin(parse_scheme("w4a16"), p.W.data(), 512, 1024, opt);
  EXPECT_TRUE(lin.fuses(Fp4Epilogue::add_rmsnorm, 64));
  EXPECT_FALSE(lin.fuses(Fp4Epilogue::add_rmsnorm, 65)) << "the prefill family sums its splits in the cluster";
  EXPECT_FALSE(lin.fuses(Fp4Epilogue::none, 1));
  DeviceBuffer<uint16_t> dx(p.Xb.size()), y(static_cast<size_t>(100 * 512));
  dx.upload(p.Xb.data());
  lin.prepare(dx.get(), 65, lin.own_activations(), nullptr);
  EXPECT_THROW(lin.gemm(lin.own_activations(), GpuLinear::Epilogue{Fp4Epilogue::swiglu}, y.get(), nullptr),
               std::invalid_argument);
  lin.prepare(dx.get(), 4, lin.own_activations(), nullptr);
  EXPECT_THROW(lin.gemm(lin.own_activations(), GpuLinear::Epilogue{Fp4Epilogue::add_rmsnorm}, y.get(), nullptr),
               std::invalid_argument) << "no residual rows or norm weights";
  GpuLinear f16(parse_scheme("fp16"), p.W.data(), 512, 1024, opt, &blas());
  EXPECT_FALSE(f16.fuses(Fp4Epilogue::swiglu, 1)) << "cuBLASLt has no such epilogue here";
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
}
