// The small-M wgmma FP4-weight GEMM (fp4_gemm (small family)) against a double-precision host reference
// of the dequantized operands: M in {1, 5, 8, 16, 33, 64} (every token tile 8 / 16 / 32 / 64),
// N in {128, 384, 4096}, K in {128, 320, 4096, 14336} (K not a multiple of 128: zero padding),
// merged (one FP16 path), exact (two FP16 paths in the same accumulators) and W4A16 (BF16), weight
// blocks 16 and 32, row scales absent / per tensor / per row, per-tensor and per-row g_w, the split
// count automatic and forced (1: the kernel writes Y; > 1: workspace + reduction).
//   - FP32 output (y_f32): relative Frobenius error <= 1e-5;
//   - BF16 output: every element within one BF16 rounding of the reference (+ FP32 slack);
//   - outputs poisoned first: nothing outside the M x N block is written;
//   - a NaN scale byte makes exactly its column NaN; two runs are bitwise identical.
// Fp4GemmSmallTiming.* prints microseconds per split count (no assertion on speed).
// Label `gpu`; skips cleanly where there is no GPU.
#include "sharq/kernels/cuda/fp4_gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "../../support/gpu_test.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/quant/fp4_tiles.h"

namespace {

using namespace sharq;

enum class Mode { merged, exact, w4a16 };
const char* mode_name(Mode m) { return m == Mode::merged ? "merged" : m == Mode::exact ? "exact" : "w4a16"; }

// Random tiles straight in the GPU layout: every code (both signs, zero), scale bytes in a range of
// 2^-6 .. 2^2 (no NaN), g per tensor or per row.
Fp4Tiles make_tiles(int64_t N, int64_t K, int block, bool g_per_row, uint64_t seed) {
  Fp4Tiles t;
  t.N = N;
  t.K = K;
  t.Np = (N + 127) / 128 * 128;
  t.Kp = (K + 127) / 128 * 128;
  t.block = block;
  const int64_t tiles = t.Np / 8 * t.k_tiles();
  t.codes.resize(static_cast<size_t>(tiles * Fp4Tiles::kTileCodeBytes));
  t.scales.resize(static_cast<size_t>(tiles * t.scale_bytes_per_tile()));
  std::mt19937_64 rng(seed);
  for (auto& c : t.codes) c = static_cast<uint8_t>(rng());
  std::uniform_int_distribution<int> sd(0x18, 0x48);
  for (auto& s : t.scales) s = static_cast<uint8_t>(sd(rng));
  // zero the scales of the padding k >= K and n >= N (the packer zeroes the codes too; with zero
  // scales the random codes of the padded rows decode to 0 and must not reach any output)
  for (int64_t n = 0; n < t.Np; ++n)
    for (int64_t k = (n < N ? K : 0); k < t.Kp; ++k) {
      const int64_t tile = (n / 8) * t.k_tiles() + k / 128;
      t.scales[static_cast<size_t>(tile * t.scale_bytes_per_tile() + (n % 8) * (128 / block) + (k % 128) / block)] = 0;
    }
  std::uniform_real_distribution<float> gd(0.25f, 4.0f);
  if (g_per_row) {
    t.g.resize(static_cast<size_t>(N));
    for (auto& g : t.g) g = gd(rng);
  } else {
    t.g.push_back(gd(rng));
  }
  return t;
}

// M x lda activation plane (16-bit codes), zero past K. FP16: exact E2M1 x UE4M3 products (what the
// prep writes). BF16: arbitrary BF16 values.
std::vector<uint16_t> make_plane(int64_t M, int64_t K, int64_t lda, bool bf16, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> code(0, 15), scale(0x28, 0x48);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint16_t> a(static_cast<size_t>(M * lda), 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      a[static_cast<size_t>(m * lda + k)] =
          bf16 ? bf16_encode(nd(rng))
               : fp16_encode(e2m1_decode(static_cast<uint8_t>(code(rng))) * ue4m3_decode(static_cast<uint8_t>(scale(rng))));
  return a;
}

struct Out {
  std::vector<float> f32;      // m_alloc x ldy
  std::vector<uint16_t> bf16;  // m_alloc x ldy
  int64_t ldy = 0, m_alloc = 0;
};

constexpr uint32_t kPoison32 = 0xFFFFFFFFu;
constexpr uint16_t kPoison16 = 0xFFFF;

// Runs the kernel twice (FP32 output, then BF16 output) on poisoned buffers.
Out run_small(const cuda::DeviceFp4Weights& w, const std::vector<std::vector<uint16_t>>& planes, int64_t M,
              int64_t lda, bool bf16, const std::vector<float>& row_scale, int splits) {
  std::vector<cuda::DeviceBuffer<uint16_t>> dplanes;
  for (const auto& p : planes) {
    dplanes.emplace_back(p.size());
    dplanes.back().upload(p.data());
  }
  cuda::DeviceBuffer<float> drs(row_scale.size());
  drs.upload(row_scale.data());
  Out o;
  o.ldy = w.N + (M % 2 ? 2 : 8);
  o.m_alloc = M + 3;
  cuda::DeviceBuffer<float> y32(static_cast<size_t>(o.ldy * o.m_alloc));
  cuda::DeviceBuffer<uint16_t> y16(static_cast<size_t>(o.ldy * o.m_alloc));
  SHARQ_CUDA_CHECK(cudaMemset(y32.get(), 0xFF, y32.bytes()));
  SHARQ_CUDA_CHECK(cudaMemset(y16.get(), 0xFF, y16.bytes()));
  const size_t ws_bytes = cuda::fp4_gemm_plan(M, w, cuda::Fp4GemmKernel::small, splits).workspace_bytes;
  cuda::DeviceBuffer<float> ws(ws_bytes / sizeof(float));
  if (ws_bytes) SHARQ_CUDA_CHECK(cudaMemset(ws.get(), 0xFF, ws.bytes()));  // NaN: every partial must be written

  cuda::Fp4GemmArgs a;
  a.a0 = dplanes[0].get();
  a.a1 = dplanes.size() > 1 ? dplanes[1].get() : nullptr;
  a.adt = bf16 ? cuda::DType::bf16 : cuda::DType::f16;
  a.M = M;
  a.lda = lda;
  a.row_scale = row_scale.empty() ? nullptr : drs.get();
  a.row_scale_count = static_cast<int64_t>(row_scale.size());
  a.ldy = o.ldy;
  a.y_f32 = y32.get();
  cuda::fp4_gemm(a, w, ws.get(), ws_bytes, nullptr, cuda::Fp4GemmKernel::small, splits);
  a.y_f32 = nullptr;
  a.y = reinterpret_cast<__nv_bfloat16*>(y16.get());
  cuda::fp4_gemm(a, w, ws.get(), ws_bytes, nullptr, cuda::Fp4GemmKernel::small, splits);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  o.f32 = y32.to_host();
  o.bf16 = y16.to_host();
  return o;
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

struct Case {
  int64_t M, N, K;
  int block;
  Mode mode;
  int rs_kind;  // 0 none, 1 per tensor, 2 per row
  bool g_per_row;
  int splits;   // 0: automatic
};

std::string describe(const Case& c) {
  return std::string(mode_name(c.mode)) + " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) +
         " K=" + std::to_string(c.K) + " block=" + std::to_string(c.block) + " rs=" + std::to_string(c.rs_kind) +
         " g_per_row=" + std::to_string(c.g_per_row) + " splits=" + std::to_string(c.splits);
}

// Weights are shared between cases (generation and upload of the larger ones cost time).
struct WeightSet {
  Fp4Tiles tiles;
  cuda::DeviceFp4Weights dev;
  std::vector<int64_t> cols;     // the checked columns
  std::vector<double> wd;        // cols.size() x K, dequantized (g not applied)
};

WeightSet& weights_for(int64_t N, int64_t K, int block, bool g_per_row) {
  static std::map<std::tuple<int64_t, int64_t, int, bool>, WeightSet> cache;
  const auto key = std::make_tuple(N, K, block, g_per_row);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() > 6) cache.clear();
  WeightSet s;
  s.tiles = make_tiles(N, K, block, g_per_row, static_cast<uint64_t>(N * 131 + K * 7 + block + g_per_row));
  s.dev = cuda::DeviceFp4Weights::upload(s.tiles);
  if (N <= 384) {
    for (int64_t n = 0; n < N; ++n) s.cols.push_back(n);
  } else {  // 256 columns: every 16-row group of a 4096-row matrix once, every row position mod 16
    for (int64_t i = 0; i < 256; ++i) s.cols.push_back((16 * i + i % 16) % N);
  }
  s.wd.resize(s.cols.size() * static_cast<size_t>(K));
#pragma omp parallel for schedule(static)
  for (int64_t ci = 0; ci < static_cast<int64_t>(s.cols.size()); ++ci)
    for (int64_t k = 0; k < K; ++k)
      s.wd[static_cast<size_t>(ci * K + k)] = static_cast<double>(e2m1_decode(fp4_tiles_code(s.tiles, s.cols[ci], k))) *
                                              static_cast<double>(ue4m3_decode(fp4_tiles_scale(s.tiles, s.cols[ci], k)));
  return cache.emplace(key, std::move(s)).first->second;
}

void check_case(const Case& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  WeightSet& ws = weights_for(c.N, c.K, c.block, c.g_per_row);
  const Fp4Tiles& tiles = ws.tiles;
  const int64_t lda = tiles.Kp + (c.M % 2 ? 8 : 0);
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

  const Out o = run_small(ws.dev, planes, c.M, lda, bf16, rs, c.splits);

  std::vector<double> a(static_cast<size_t>(paths * c.M * c.K));
  for (int p = 0; p < paths; ++p)
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t k = 0; k < c.K; ++k) {
        const uint16_t v = planes[p][static_cast<size_t>(m * lda + k)];
        a[static_cast<size_t>((p * c.M + m) * c.K + k)] = bf16 ? bf16_decode(v) : fp16_decode(v);
      }
  const int64_t nc = static_cast<int64_t>(ws.cols.size());
  std::vector<double> ref(static_cast<size_t>(c.M * nc)), absref(ref.size());
#pragma omp parallel for schedule(static)
  for (int64_t idx = 0; idx < c.M * nc; ++idx) {
    const int64_t m = idx / nc, ci = idx % nc, n = ws.cols[static_cast<size_t>(ci)];
    double s = 0, sa = 0;
    const double* wr = ws.wd.data() + ci * c.K;
    for (int p = 0; p < paths; ++p) {
      const double* ar = a.data() + (p * c.M + m) * c.K;
      for (int64_t k = 0; k < c.K; ++k) {
        s += ar[k] * wr[k];
        sa += std::fabs(ar[k] * wr[k]);
      }
    }
    const double sc = (rs.empty() ? 1.0 : rs[rs.size() == 1 ? 0 : static_cast<size_t>(m)]) *
                      static_cast<double>(tiles.g.size() == 1 ? tiles.g[0] : tiles.g[static_cast<size_t>(n)]);
    ref[static_cast<size_t>(idx)] = s * sc;
    absref[static_cast<size_t>(idx)] = sa * std::fabs(sc);
  }
  double num = 0, den = 0;
  int64_t bad16 = 0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t ci = 0; ci < nc; ++ci) {
      const int64_t n = ws.cols[static_cast<size_t>(ci)];
      const double r = ref[static_cast<size_t>(m * nc + ci)], ar = absref[static_cast<size_t>(m * nc + ci)];
      const double g32 = o.f32[static_cast<size_t>(m * o.ldy + n)];
      num += (g32 - r) * (g32 - r);
      den += r * r;
      const double g16 = bf16_decode(o.bf16[static_cast<size_t>(m * o.ldy + n)]);
      if (!(std::fabs(g16 - r) <= std::ldexp(std::fabs(r), -8) + 1e-5 * ar + 1e-30)) {
        if (bad16 < 5) ADD_FAILURE() << "bf16 m=" << m << " n=" << n << " got " << g16 << " want " << r;
        ++bad16;
      }
    }
  const double rel = std::sqrt(num / (den > 0 ? den : 1e-300));
  EXPECT_LE(rel, 1e-5) << "FP32 output: relative Frobenius error";
  EXPECT_EQ(bad16, 0);
  int64_t touched = 0;
  for (int64_t m = 0; m < o.m_alloc; ++m)
    for (int64_t n = (m < c.M ? c.N : 0); n < o.ldy; ++n) {
      touched += bits_of(o.f32[static_cast<size_t>(m * o.ldy + n)]) != kPoison32;
      touched += o.bf16[static_cast<size_t>(m * o.ldy + n)] != kPoison16;
    }
  EXPECT_EQ(touched, 0) << "elements outside the M x N output were written";
  // every element inside was written (finite: no NaN scale here)
  int64_t unwritten = 0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n)
      unwritten += !std::isfinite(o.f32[static_cast<size_t>(m * o.ldy + n)]) ||
                   !std::isfinite(bf16_decode(o.bf16[static_cast<size_t>(m * o.ldy + n)]));
  EXPECT_EQ(unwritten, 0) << "elements of the M x N output not written (or not finite)";
}

void sweep(Mode mode) {
  uint64_t seed = 1;
  int variant = 0;
  for (int block : {32, 16})
    for (int64_t N : {128, 384, 4096})
      for (int64_t K : {128, 320, 4096, 14336})
        for (int64_t M : {1, 5, 8, 16, 33, 64}) {
          Case c{M, N, K, block, mode, variant % 3, ((variant / 3) % 2) == 1, 0};
          if (M == 1 && c.rs_kind == 2) c.rs_kind = 1;
          // forced split counts now and then: 1 (direct output) and 3 (reduction, uneven ranges)
          if (variant % 5 == 1) c.splits = 1;
          if (variant % 5 == 3) c.splits = 3;
          ++variant;
          check_case(c, seed++);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

TEST(Fp4GemmSmall, MergedSinglePathMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  sweep(Mode::merged);
}

TEST(Fp4GemmSmall, ExactTwoPathsAccumulateTogether) {
  SKIP_WITHOUT_GPU();
  sweep(Mode::exact);
}

TEST(Fp4GemmSmall, W4A16Bf16MatchesTheReference) {
  SKIP_WITHOUT_GPU();
  sweep(Mode::w4a16);
}

// Every forced split count of a small problem (1 .. k_tiles, uneven last ranges) against the reference.
TEST(Fp4GemmSmall, EverySplitCountMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  for (int s = 1; s <= 11; ++s) check_case(Case{7, 256, 1300, 32, Mode::exact, 2, true, s}, 500 + s);
}

// Same inputs twice: bitwise identical (the split sums run in a fixed order).
TEST(Fp4GemmSmall, Deterministic) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 16, N = 384, K = 4096;
  const Fp4Tiles tiles = make_tiles(N, K, 32, true, 77);
  const auto w = cuda::DeviceFp4Weights::upload(tiles);
  std::vector<std::vector<uint16_t>> planes{make_plane(M, K, tiles.Kp, false, 1), make_plane(M, K, tiles.Kp, false, 2)};
  ASSERT_GT(cuda::fp4_gemm_plan(M, w).workspace_bytes, 0u) << "expected a split-K plan";
  const Out a = run_small(w, planes, M, tiles.Kp, false, {1.5f}, 0), b = run_small(w, planes, M, tiles.Kp, false, {1.5f}, 0);
  EXPECT_EQ(std::memcmp(a.f32.data(), b.f32.data(), a.f32.size() * 4), 0);
  EXPECT_EQ(a.bf16, b.bf16);
}

// One weight block with the NaN scale (0x7F): exactly its output column becomes NaN, every row.
TEST(Fp4GemmSmall, NanScalePoisonsExactlyItsColumn) {
  SKIP_WITHOUT_GPU();
  for (int block : {32, 16})
    for (Mode mode : {Mode::merged, Mode::exact, Mode::w4a16})
      for (int splits : {1, 0}) {
        SCOPED_TRACE(std::string(mode_name(mode)) + " block " + std::to_string(block) + " splits " + std::to_string(splits));
        const int64_t M = 5, N = 256, K = 384;
        Fp4Tiles tiles = make_tiles(N, K, block, false, 99 + block);
        const int64_t nn = 133, kk = 200;
        const int64_t tile = (nn / 8) * tiles.k_tiles() + kk / 128;
        tiles.scales[static_cast<size_t>(tile * tiles.scale_bytes_per_tile() + (nn % 8) * (128 / block) +
                                         (kk % 128) / block)] = kUe4m3Nan;
        ASSERT_EQ(fp4_tiles_scale(tiles, nn, kk), kUe4m3Nan);
        const auto w = cuda::DeviceFp4Weights::upload(tiles);
        const bool bf16 = mode == Mode::w4a16;
        std::vector<std::vector<uint16_t>> planes;
        for (int p = 0; p < (mode == Mode::exact ? 2 : 1); ++p) planes.push_back(make_plane(M, K, tiles.Kp, bf16, 5 + p));
        const Out o = run_small(w, planes, M, tiles.Kp, bf16, {}, splits);
        int64_t wrong = 0;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            const float v32 = o.f32[static_cast<size_t>(m * o.ldy + n)];
            const float v16 = bf16_decode(o.bf16[static_cast<size_t>(m * o.ldy + n)]);
            wrong += (n == nn) ? (!std::isnan(v32) || !std::isnan(v16)) : (!std::isfinite(v32) || !std::isfinite(v16));
          }
        EXPECT_EQ(wrong, 0);
      }
}

TEST(Fp4GemmSmall, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  const Fp4Tiles tiles = make_tiles(256, 4096, 32, false, 3);
  const auto w = cuda::DeviceFp4Weights::upload(tiles);
  cuda::DeviceBuffer<uint16_t> a(static_cast<size_t>(65 * 4096)), y(static_cast<size_t>(65 * 256));
  cuda::Fp4GemmArgs args;
  args.a0 = a.get();
  args.M = 65;
  args.lda = 4096;
  args.y = reinterpret_cast<__nv_bfloat16*>(y.get());
  args.ldy = 256;
  EXPECT_THROW(cuda::fp4_gemm(args, w, nullptr, 0, nullptr, cuda::Fp4GemmKernel::small), std::invalid_argument);  // M > 64
  args.M = 4;
  ASSERT_GT(cuda::fp4_gemm_plan(4, w).workspace_bytes, 0u);
  EXPECT_THROW(cuda::fp4_gemm(args, w, nullptr, 0, nullptr), std::invalid_argument);  // no workspace
  args.lda = 4000;
  EXPECT_THROW(cuda::fp4_gemm(args, w, nullptr, 0, nullptr, cuda::Fp4GemmKernel::small, 1), std::invalid_argument);  // lda < Kp
  args.lda = 4096;
  args.ldy = 255;
  EXPECT_THROW(cuda::fp4_gemm(args, w, nullptr, 0, nullptr, cuda::Fp4GemmKernel::small, 1), std::invalid_argument);  // ldy < N
  args.ldy = 256;
  args.a0 = static_cast<const uint8_t*>(args.a0) + 2;
  EXPECT_THROW(cuda::fp4_gemm(args, w, nullptr, 0, nullptr, cuda::Fp4GemmKernel::small, 1), std::invalid_argument);  // misaligned
  EXPECT_THROW(cuda::fp4_gemm_plan(4, w, cuda::Fp4GemmKernel::small, -1), std::invalid_argument);
}

// The split count is a function of (N, K) only: the same for every M of the family (batch invariance).
TEST(Fp4GemmSmall, SplitCountDoesNotDependOnM) {
  SKIP_WITHOUT_GPU();
  for (auto [N, K] : {std::pair<int64_t, int64_t>{128, 4096}, {4096, 14336}, {28672, 4096}, {200, 320}}) {
    const auto w = cuda::DeviceFp4Weights::upload(make_tiles(N, K, 32, false, 9));
    const auto p1 = cuda::fp4_gemm_plan(1, w);
    for (int64_t M = 2; M <= cuda::kSmallMaxM; ++M) {
      const auto p = cuda::fp4_gemm_plan(M, w);
      EXPECT_EQ(p.kernel, cuda::Fp4GemmKernel::small);
      EXPECT_EQ(p.splits, p1.splits) << "N=" << N << " K=" << K << " M=" << M;
      EXPECT_EQ(p.kt_per_split, p1.kt_per_split);
    }
    EXPECT_EQ(cuda::fp4_gemm_plan(cuda::kSmallMaxM + 1, w).kernel, cuda::Fp4GemmKernel::prefill);
    EXPECT_EQ(cuda::fp4_gemm_workspace_bytes(1000, w), cuda::fp4_gemm_plan(cuda::kSmallMaxM, w).workspace_bytes);
  }
}

// Any N: the layout pads the weight rows to 128 and the kernels write no column >= N.
TEST(Fp4GemmSmall, AnyOutputWidthMatchesTheReference) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 900;
  for (int64_t N : {8, 200, 1000})
    for (int64_t M : {1, 7, 64})
      for (Mode mode : {Mode::exact, Mode::merged, Mode::w4a16})
        for (int splits : {0, 1, 2}) check_case(Case{M, N, 320, 32, mode, 2 * (M > 1), N == 200, splits}, seed++);
}

// ---- timing (prints only) ----------------------------------------------------------------------
struct Timer {
  cudaEvent_t a, b;
  Timer() {
    SHARQ_CUDA_CHECK(cudaEventCreate(&a));
    SHARQ_CUDA_CHECK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

// Median over 50 batches of 8 back-to-back launches rotating 4 weight copies (cold L2), per launch;
// and the median of 50 single launches (each on an idle stream, after a sync).
template <class F>
std::pair<double, double> time_us(F&& launch, int copies) {
  Timer t;
  for (int i = 0; i < 3 * copies; ++i) launch(i % copies);
  SHARQ_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> batch, single;
  for (int r = 0; r < 50; ++r) {
    SHARQ_CUDA_CHECK(cudaEventRecord(t.a));
    for (int i = 0; i < 8; ++i) launch(i % copies);
    SHARQ_CUDA_CHECK(cudaEventRecord(t.b));
    SHARQ_CUDA_CHECK(cudaEventSynchronize(t.b));
    float ms = 0;
    SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms, t.a, t.b));
    batch.push_back(ms * 1000.0f / 8);
  }
  for (int r = 0; r < 50; ++r) {
    SHARQ_CUDA_CHECK(cudaEventRecord(t.a));
    launch(r % copies);
    SHARQ_CUDA_CHECK(cudaEventRecord(t.b));
    SHARQ_CUDA_CHECK(cudaEventSynchronize(t.b));
    float ms = 0;
    SHARQ_CUDA_CHECK(cudaEventElapsedTime(&ms, t.a, t.b));
    single.push_back(ms * 1000.0f);
  }
  std::nth_element(batch.begin(), batch.begin() + 25, batch.end());
  std::nth_element(single.begin(), single.begin() + 25, single.end());
  return {batch[25], single[25]};
}

TEST(Fp4GemmSmallTiming, SplitCounts) {
  SKIP_WITHOUT_GPU();
  constexpr int kCopies = 4;
  for (auto [N, K] : {std::pair<int64_t, int64_t>{28672, 4096}, {4096, 14336}, {6144, 4096}, {4096, 4096}}) {
    std::vector<cuda::DeviceFp4Weights> ws;
    for (int i = 0; i < kCopies; ++i) {
      cuda::DeviceFp4Weights w;
      w.N = N; w.K = K; w.Np = N; w.Kp = K; w.block = 32;
      w.codes = cuda::DeviceBuffer<uint8_t>(static_cast<size_t>(N * K / 2));
      w.scales = cuda::DeviceBuffer<uint8_t>(static_cast<size_t>(N * K / 32));
      w.g = cuda::DeviceBuffer<float>(1);
      SHARQ_CUDA_CHECK(cudaMemset(w.codes.get(), 0x3A + i, w.codes.bytes()));
      SHARQ_CUDA_CHECK(cudaMemset(w.scales.get(), 0x38, w.scales.bytes()));
      const float one = 1.0f;
      w.g.upload(&one);
      ws.push_back(std::move(w));
    }
    const double wbytes = static_cast<double>(ws[0].codes.bytes() + ws[0].scales.bytes());
    for (int64_t M : {1, 16}) {
      for (int paths : {1, 2}) {
        std::vector<cuda::DeviceBuffer<uint16_t>> planes;
        for (int p = 0; p < paths; ++p) {
          planes.emplace_back(static_cast<size_t>(M * K));
          SHARQ_CUDA_CHECK(cudaMemset(planes.back().get(), 0x22, planes.back().bytes()));  // small finite FP16
        }
        cuda::DeviceBuffer<uint16_t> y(static_cast<size_t>(M * N));
        size_t need = 0;
        for (int s : {0, 1, 2, 3, 4, 6, 8, 16}) need = std::max(need, cuda::fp4_gemm_plan(M, ws[0], cuda::Fp4GemmKernel::small, s).workspace_bytes);
        cuda::DeviceBuffer<float> wsp(need / 4 + 4);
        cuda::Fp4GemmArgs a;
        a.a0 = planes[0].get();
        a.a1 = paths == 2 ? planes[1].get() : nullptr;
        a.M = M;
        a.lda = K;
        a.y = reinterpret_cast<__nv_bfloat16*>(y.get());
        a.ldy = N;
        std::printf("[timing] N=%lld K=%lld M=%lld paths=%d\n", static_cast<long long>(N), static_cast<long long>(K),
                    static_cast<long long>(M), paths);
        for (int s : {0, 1, 2, 3, 4, 6, 8, 16}) {
          const auto nw = time_us([&](int i) { cuda::fp4_gemm(a, ws[i], wsp.get(), wsp.bytes(), nullptr, cuda::Fp4GemmKernel::small, s); }, kCopies);
          const size_t wsb = cuda::fp4_gemm_plan(M, ws[0], cuda::Fp4GemmKernel::small, s).workspace_bytes;
          std::printf("[timing]   wgmma_small splits=%s%d: %.1f us/launch back-to-back (%.2f TB/s), %.1f us single%s\n",
                      s == 0 ? "auto->" : "", s == 0 ? static_cast<int>(wsb ? wsb / (M * N * 4) : 1) : s, nw.first,
                      wbytes / nw.first * 1e-6, nw.second, s == 0 ? "  <- automatic" : "");
        }
      }
    }
  }
  SHARQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace
