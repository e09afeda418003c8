// The wgmma prefill FP4-weight GEMM against a double-precision host reference: merged (one FP16
// path), exact (two FP16 paths summed in the same accumulators) and W4A16 (BF16 activations), weight
// blocks of 16 and 32, M not a multiple of the 128-row tile, K not a multiple of 128 (zero padding),
// per-tensor and per-row g_w, row scales absent / per tensor / per row, ldy with 16-byte and with
// 4-byte aligned rows, split-K clusters of the planner's and of forced sizes. Y is poisoned first:
// rows >= M and columns >= N must stay untouched. A NaN weight scale makes exactly its column NaN.
// Label `gpu`; skips cleanly where there is no GPU.
#include "sharq/kernels/cuda/fp4_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../support/gpu_test.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/quant/fp4_tiles.h"
#include "sharq/quant/quantized_matrix.h"

namespace {

using namespace sharq;

enum class Mode { merged, exact, w4a16 };

const char* mode_name(Mode m) { return m == Mode::merged ? "merged" : m == Mode::exact ? "exact" : "w4a16"; }

struct Case {
  int64_t M, N, K;
  int block;       // 16 or 32
  Mode mode;
  int rs_kind;     // 0: no row scale, 1: one, 2: per row
  bool g_per_row;  // per-row g_w
};

std::string describe(const Case& c) {
  return std::string(mode_name(c.mode)) + " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) +
         " K=" + std::to_string(c.K) + " block=" + std::to_string(c.block) + " rs=" + std::to_string(c.rs_kind) +
         " g_per_row=" + std::to_string(c.g_per_row);
}

Fp4Tiles make_weights(int64_t N, int64_t K, int block, bool g_per_row, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    const float row_mag = std::ldexp(1.0f, static_cast<int>(n % 7) - 3);  // rows of different size
    for (int64_t k = 0; k < K; ++k) w[static_cast<size_t>(n * K + k)] = row_mag * nd(rng);
  }
  const GlobalScale gs = g_per_row ? GlobalScale::per_row : GlobalScale::per_tensor;
  if (block == 16) return pack_fp4_tiles(quantize_matrix<Nvfp4_16>(w.data(), N, K, gs));
  return pack_fp4_tiles(quantize_matrix<Nvfp4_32>(w.data(), N, K, gs));
}

// An M x lda activation plane (16-bit codes), zero past K. FP16: exact E2M1 x UE4M3 products (what
// the prep writes), about a quarter of them 0. BF16: arbitrary BF16 values.
std::vector<uint16_t> make_plane(int64_t M, int64_t K, int64_t lda, bool bf16, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> code(0, 15), scale(0x28, 0x48);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint16_t> a(static_cast<size_t>(M * lda), 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      uint16_t v;
      if (bf16) {
        v = bf16_encode(nd(rng));
      } else {
        const float x = e2m1_decode(static_cast<uint8_t>(code(rng))) * ue4m3_decode(static_cast<uint8_t>(scale(rng)));
        v = fp16_encode(x);
      }
      a[static_cast<size_t>(m * lda + k)] = v;
    }
  return a;
}

float plane_value(uint16_t v, bool bf16) { return bf16 ? bf16_decode(v) : fp16_decode(v); }

struct PrefillRun {
  std::vector<uint16_t> y;  // M_alloc x ldy, BF16 bits
  int64_t ldy = 0, m_alloc = 0;
};

constexpr uint16_t kPoison = 0xFFFF;

// Runs the kernel on the given tiles and planes; returns the whole (poisoned first) Y buffer.
PrefillRun run_prefill(const Fp4Tiles& tiles, const std::vector<std::vector<uint16_t>>& planes, int64_t M, int64_t lda,
                       bool bf16, const std::vector<float>& row_scale, int splits = 0) {
  // ldy % 8 == 0 takes the kernel's 16-byte store path, ldy % 8 == 2 its 4-byte one, an odd ldy
  // its element stores (and the split sums' element fallback)
  const int64_t ldy = tiles.N + (M % 3 == 0 ? 2 : M % 3 == 1 ? 8 : 1);
  const auto w = cuda::DeviceFp4Weights::upload(tiles);
  std::vector<cuda::DeviceBuffer<uint16_t>> dplanes;
  for (const auto& p : planes) {
    dplanes.emplace_back(p.size());
    dplanes.back().upload(p.data());
  }
  cuda::DeviceBuffer<float> drs(row_scale.size());
  drs.upload(row_scale.data());
  PrefillRun r;
  r.ldy = ldy;
  r.m_alloc = M + 5;
  cuda::DeviceBuffer<uint16_t> dy(static_cast<size_t>(r.ldy * r.m_alloc));
  SHARQ_CUDA_CHECK(cudaMemset(dy.get(), 0xFF, dy.bytes()));

  cuda::Fp4GemmArgs a;
  a.a0 = dplanes[0].get();
  a.a1 = dplanes.size() > 1 ? dplanes[1].get() : nullptr;
  a.adt = bf16 ? cuda::DType::bf16 : cuda::DType::f16;
  a.M = M;
  a.lda = lda;
  a.row_scale = row_scale.empty() ? nullptr : drs.get();
  a.row_scale_count = static_cast<int64_t>(row_scale.size());
  a.y = reinterpret_cast<__nv_bfloat16*>(dy.get());
  a.ldy = r.ldy;
  cuda::fp4_gemm(a, w, nullptr, 0, nullptr, cuda::Fp4GemmKernel::prefill, splits);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  r.y = dy.to_host();
  return r;
}

void check_case(const Case& c, uint64_t seed, int splits = 0) {
  SCOPED_TRACE(describe(c) + " splits=" + std::to_string(splits));
  const Fp4Tiles tiles = make_weights(c.N, c.K, c.block, c.g_per_row, seed);
  ASSERT_EQ(tiles.block, c.block);
  const int64_t lda = tiles.Kp + (c.M % 2 ? 8 : 0);  // sometimes wider than Kp
  const bool bf16 = c.mode == Mode::w4a16;
  const int paths = c.mode == Mode::exact ? 2 : 1;
  std::vector<std::vector<uint16_t>> planes;
  for (int p = 0; p < paths; ++p) planes.push_back(make_plane(c.M, c.K, lda, bf16, seed * 31 + p));
  std::vector<float> rs;
  std::mt19937_64 rng(seed + 7);
  std::uniform_real_distribution<float> ud(0.5f, 2.0f);
  if (c.rs_kind == 1) rs.push_back(ud(rng));
  if (c.rs_kind == 2)
    for (int64_t m = 0; m < c.M; ++m) rs.push_back(ud(rng));

  const PrefillRun r = run_prefill(tiles, planes, c.M, lda, bf16, rs, splits);

  // reference in double
  const std::vector<float> wd = fp4_tiles_dequantize(tiles);  // N x K
  std::vector<double> a(static_cast<size_t>(c.M * c.K) * paths);
  for (int p = 0; p < paths; ++p)
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t k = 0; k < c.K; ++k)
        a[static_cast<size_t>((p * c.M + m) * c.K + k)] = plane_value(planes[p][static_cast<size_t>(m * lda + k)], bf16);
  int64_t bad = 0;
  double worst = 0.0;
  for (int64_t m = 0; m < c.M; ++m) {
    const double rsv = rs.empty() ? 1.0 : rs[rs.size() == 1 ? 0 : static_cast<size_t>(m)];
    for (int64_t n = 0; n < c.N; ++n) {
      double s = 0.0, sa = 0.0;
      const float* wr = wd.data() + n * c.K;
      for (int p = 0; p < paths; ++p) {
        const double* ar = a.data() + (p * c.M + m) * c.K;
        for (int64_t k = 0; k < c.K; ++k) {
          const double t = ar[k] * static_cast<double>(wr[k]);
          s += t;
          sa += std::fabs(t);
        }
      }
      const double sc = rsv * static_cast<double>(tiles.g.size() == 1 ? tiles.g[0] : tiles.g[static_cast<size_t>(n)]);
      const double ref = s * sc, absref = sa * std::fabs(sc);
      const uint16_t bits = r.y[static_cast<size_t>(m * r.ldy + n)];
      const double got = bf16_decode(bits);
      const double err = std::fabs(got - ref);
      const double tol = 1e-2 * std::fabs(ref) + 1e-4 * absref + 1e-30;
      if (!(err <= tol)) {
        if (bad < 8)
          ADD_FAILURE() << "m=" << m << " n=" << n << " got " << got << " (0x" << std::hex << bits << std::dec
                        << ") want " << ref << " (abs-sum " << absref << ")";
        ++bad;
      }
      if (absref > 0) worst = std::max(worst, err / (std::fabs(ref) + 1e-2 * absref));
    }
  }
  EXPECT_EQ(bad, 0) << "worst error / (|ref| + 1e-2 abs-sum): " << worst;
  // poison: columns >= N of rows < M, and every row >= M, untouched
  int64_t touched = 0;
  for (int64_t m = 0; m < r.m_alloc; ++m)
    for (int64_t n = (m < c.M ? c.N : 0); n < r.ldy; ++n) touched += r.y[static_cast<size_t>(m * r.ldy + n)] != kPoison;
  EXPECT_EQ(touched, 0) << "elements outside the M x N output were written";
}

void sweep(Mode mode) {
  uint64_t seed = 1;
  int variant = 0;
  for (int block : {32, 16})
    for (int64_t M : {1, 77, 128, 300})
      for (int64_t N : {128, 384})
        for (int64_t K : {128, 320, 4096}) {
          Case c{M, N, K, block, mode, variant % 3, (variant % 2) == 1};
          if (M == 1 && c.rs_kind == 2) c.rs_kind = 1;
          ++variant;
          check_case(c, seed++);
          // the planner splits K = 4096 here (few weight-row tiles): the unsplit kernel over many
          // k-tiles (batch_invariant, large M) is checked too
          if (K >= 1024) check_case(c, seed++, 1);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

TEST(Fp4GemmPrefill, MergedSinglePathMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  sweep(Mode::merged);
}

TEST(Fp4GemmPrefill, ExactTwoPathsAccumulateTogether) {
  SKIP_WITHOUT_GPU();
  sweep(Mode::exact);
}

TEST(Fp4GemmPrefill, W4A16Bf16MatchesTheReference) {
  SKIP_WITHOUT_GPU();
  sweep(Mode::w4a16);
}

// A large-ish shape: many k-steps and several CTAs in both grid dimensions.
TEST(Fp4GemmPrefill, LargerShapeMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  check_case(Case{1000, 1024, 2048, 32, Mode::exact, 2, true}, 4242);
  check_case(Case{513, 640, 1152, 16, Mode::merged, 1, false}, 4243);
  check_case(Case{1000, 1024, 2048, 32, Mode::exact, 2, true}, 4244, 1);  // unsplit, many k-tiles
}

// Forced split-K cluster sizes, powers of two and not (3, 5, 6, 7: the token rows of a tile do not
// divide evenly among the CTAs), on partial weight-row and token tiles, odd (element stores) and
// even ldy, K not a multiple of 128, every mode; and a count that would leave a split empty falls
// back to the largest valid one.
TEST(Fp4GemmPrefill, ForcedSplitsMatchTheReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 3000;
  check_case(Case{200, 200, 4000, 32, Mode::exact, 2, true}, seed++, 7);  // N % 128, K % 128 != 0, 7 splits
  check_case(Case{77, 136, 1000, 16, Mode::merged, 1, false}, seed++, 3);
  for (int splits : {2, 3, 4, 5, 6, 8})
    for (Mode mode : {Mode::merged, Mode::exact, Mode::w4a16}) {
      check_case(Case{splits % 2 ? 77 : 300, 384, 4096, splits % 3 ? 32 : 16, mode, splits % 3, splits == 4}, seed++, splits);
      if (::testing::Test::HasFatalFailure()) return;
    }
  check_case(Case{129, 200, 1152, 32, Mode::merged, 2, true}, seed++, 8);  // 9 k-tiles: 8 -> 5 splits
  check_case(Case{1000, 1024, 2048, 32, Mode::exact, 2, true}, seed++, 4);
  const auto w = cuda::DeviceFp4Weights::upload(make_weights(128, 1152, 32, false, 1));
  EXPECT_EQ(cuda::fp4_gemm_plan(300, w, cuda::Fp4GemmKernel::prefill, 8).splits, 5);
  EXPECT_EQ(cuda::fp4_gemm_plan(300, w, cuda::Fp4GemmKernel::prefill, 100).splits, 5);
  EXPECT_EQ(cuda::fp4_gemm_plan(300, w, cuda::Fp4GemmKernel::prefill, 1).splits, 1);
  EXPECT_EQ(cuda::fp4_gemm_plan(300, w, cuda::Fp4GemmKernel::prefill, 3).kt_per_split, 3);
}

// The prefill split count: never an empty split, at most 8 (the portable cluster), never more
// clusters than the card can co-schedule, no workspace; and 1 for every M with batch_invariant.
TEST(Fp4GemmPrefill, SplitPlansAreValidAndPinnedWhenBatchInvariant) {
  SKIP_WITHOUT_GPU();
  std::printf("  prefill clusters per wave:");
  for (int c = 1; c <= 8; ++c) std::printf(" c=%d: %d", c, cuda::fp4_gemm_prefill_clusters_per_wave(c));
  std::printf("\n");
  for (auto [N, K] : {std::pair<int64_t, int64_t>{128, 4096}, {4096, 14336}, {4096, 4096}, {6144, 4096}, {28672, 4096},
                      {200, 320}}) {
    const auto w = cuda::DeviceFp4Weights::upload(make_weights(N, K, 32, false, 9));
    const int64_t k_tiles = w.Kp / 128;
    std::printf("  prefill plan N=%lld K=%lld:", static_cast<long long>(N), static_cast<long long>(K));
    for (int64_t M : {65, 128, 129, 256, 512, 1000, 4096, 100000}) {
      const auto p = cuda::fp4_gemm_plan(M, w);
      EXPECT_EQ(p.kernel, cuda::Fp4GemmKernel::prefill);
      EXPECT_GE(p.splits, 1);
      EXPECT_LE(p.splits, 8);
      EXPECT_GT(cuda::fp4_gemm_prefill_clusters_per_wave(static_cast<int>(p.splits)), 0);
      EXPECT_EQ(p.kt_per_split, (k_tiles + p.splits - 1) / p.splits);
      EXPECT_GT(k_tiles - (p.splits - 1) * p.kt_per_split, 0) << "an empty split";
      EXPECT_EQ(p.workspace_bytes, 0u);
      const auto pe = cuda::fp4_gemm_plan(M, w, cuda::Fp4GemmKernel::automatic, 0, false, 2);  // the exact mode
      EXPECT_GE(pe.splits, 1);
      EXPECT_LE(pe.splits, 8);
      EXPECT_GT(k_tiles - (pe.splits - 1) * pe.kt_per_split, 0) << "an empty split (two paths)";
      for (int paths : {1, 2}) {
        const auto pi = cuda::fp4_gemm_plan(M, w, cuda::Fp4GemmKernel::automatic, 0, true, paths);
        EXPECT_EQ(pi.splits, 1) << "N=" << N << " K=" << K << " M=" << M;
        EXPECT_EQ(pi.kt_per_split, k_tiles);
      }
      std::printf(" M=%lld: %lld", static_cast<long long>(M), static_cast<long long>(p.splits));
    }
    std::printf("\n");
    EXPECT_THROW(cuda::fp4_gemm_plan(256, w, cuda::Fp4GemmKernel::automatic, 0, false, 3), std::invalid_argument);
  }
}

// One weight block with the NaN scale (0x7F): exactly its output column becomes NaN, every row.
TEST(Fp4GemmPrefill, NanScalePoisonsExactlyItsColumn) {
  SKIP_WITHOUT_GPU();
  for (int block : {32, 16})
    for (Mode mode : {Mode::merged, Mode::exact, Mode::w4a16}) {
      SCOPED_TRACE(std::string(mode_name(mode)) + " block " + std::to_string(block));
      const int64_t M = 150, N = 256, K = 384;
      Fp4Tiles tiles = make_weights(N, K, block, false, 99 + block);
      const int64_t nn = 133, kk = 200;  // the poisoned block holds (nn, kk)
      const int64_t tile = (nn / 8) * tiles.k_tiles() + kk / 128;
      tiles.scales[static_cast<size_t>(tile * tiles.scale_bytes_per_tile() + (nn % 8) * (128 / block) +
                                       (kk % 128) / block)] = kUe4m3Nan;
      ASSERT_EQ(fp4_tiles_scale(tiles, nn, kk), kUe4m3Nan);
      const bool bf16 = mode == Mode::w4a16;
      std::vector<std::vector<uint16_t>> planes;
      for (int p = 0; p < (mode == Mode::exact ? 2 : 1); ++p) planes.push_back(make_plane(M, K, tiles.Kp, bf16, 5 + p));
      const PrefillRun r = run_prefill(tiles, planes, M, tiles.Kp, bf16, {});
      int64_t wrong = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          const float v = bf16_decode(r.y[static_cast<size_t>(m * r.ldy + n)]);
          wrong += (n == nn) ? !std::isnan(v) : !std::isfinite(v);
        }
      EXPECT_EQ(wrong, 0);
    }
}

// Any N: the layout pads the weight rows to 128; the last block stores element by element and writes
// no column >= N (the poisoned output checks it). Odd ldy too (element stores everywhere).
TEST(Fp4GemmPrefill, AnyOutputWidthMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 700;
  for (int64_t N : {8, 136, 200, 1000})
    for (int64_t M : {65, 300})
      for (Mode mode : {Mode::exact, Mode::merged, Mode::w4a16}) check_case(Case{M, N, 320, 32, mode, 2, N == 200}, seed++);
}

}  // namespace
