// The GPU weight quantizers (kernels/cuda/weight_quant.h) against the CPU runtime's, bit for bit:
//   - NVFP4-16 and NVFP4-32 packed tiles (codes, scale bytes, g) equal pack_fp4_tiles(quantize_matrix(
//     W, per_tensor)) on seeded random matrices of odd shapes, on matrices with NaN / Inf / zero rows,
//     and on every projection of real checkpoints (stories260K, sharq-lm-30m: first and last layer);
//   - fp8 per-channel codes and scales equal fp8_quantize_row, padding rows zero with scale 1;
//   - BF16 / FP16 conversion equals bf16_encode / fp16_encode (NaN, Inf, subnormals included);
//   - fill_synthetic is deterministic and covers [-1, 1) * scale + offset;
//   - bad arguments throw.
// Label `gpu`.
#include "sharq/kernels/cuda/weight_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../../support/gpu_test.h"
#include "../../support/test_inputs.h"
#include "sharq/formats/minifloat.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/model/weights.h"
#include "sharq/quant/fp4_tiles.h"
#include "sharq/quant/fp8.h"

namespace {

using namespace sharq;
using namespace sharq::cuda;

DeviceBuffer<float> upload(const std::vector<float>& w) {
  DeviceBuffer<float> d(w.size());
  d.upload(w.data());
  return d;
}

// Returns the number of mismatching bytes (codes + scales + g) between the GPU and the host packing.
void expect_fp4_equal(const std::vector<float>& w, int64_t N, int64_t K, int block, const std::string& what) {
  const DeviceBuffer<float> d = upload(w);
  const DeviceFp4Weights g = quantize_fp4_weights(d.get(), N, K, block, nullptr);
  const Fp4Tiles h = block == 32 ? pack_fp4_tiles(quantize_matrix<Nvfp4_32>(w.data(), N, K, GlobalScale::per_tensor))
                                 : pack_fp4_tiles(quantize_matrix<Nvfp4_16>(w.data(), N, K, GlobalScale::per_tensor));
  ASSERT_EQ(g.Np, h.Np) << what;
  ASSERT_EQ(g.Kp, h.Kp) << what;
  const std::vector<uint8_t> codes = g.codes.to_host(), scales = g.scales.to_host();
  const std::vector<float> gs = g.g.to_host();
  ASSERT_EQ(codes.size(), h.codes.size()) << what;
  ASSERT_EQ(scales.size(), h.scales.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < codes.size(); ++i) bad += codes[i] != h.codes[i];
  EXPECT_EQ(bad, 0u) << what << ": code bytes differ";
  bad = 0;
  for (size_t i = 0; i < scales.size(); ++i) bad += scales[i] != h.scales[i];
  EXPECT_EQ(bad, 0u) << what << ": scale bytes differ";
  ASSERT_EQ(gs.size(), 1u);
  ASSERT_EQ(h.g.size(), 1u);
  EXPECT_EQ(f32_bits(gs[0]), f32_bits(h.g[0])) << what << ": g " << gs[0] << " vs " << h.g[0];
}

std::vector<float> random_matrix(int64_t N, int64_t K, uint64_t seed, double sd) {
  sharq_test::Rng rng(seed);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (auto& v : w) v = static_cast<float>(rng.normal() * sd);
  return w;
}

TEST(WeightQuant, Fp4MatchesTheHostPackerOnRandomShapes) {
  SKIP_WITHOUT_GPU();
  const int64_t shapes[][2] = {{1, 1}, {7, 33}, {128, 128}, {130, 200}, {300, 1000}, {257, 4096}};
  uint64_t seed = 11;
  for (const auto& s : shapes)
    for (int block : {16, 32}) {
      const std::vector<float> w = random_matrix(s[0], s[1], ++seed, 0.03);
      expect_fp4_equal(w, s[0], s[1], block, "random " + std::to_string(s[0]) + "x" + std::to_string(s[1]));
    }
}

TEST(WeightQuant, Fp4MatchesTheHostPackerWithSpecialValues) {
  SKIP_WITHOUT_GPU();
  const int64_t N = 40, K = 300;
  std::vector<float> w = random_matrix(N, K, 99, 1.0);
  for (int64_t k = 0; k < K; ++k) w[static_cast<size_t>(3 * K + k)] = 0.0f;  // a zero row
  w[5 * K + 17] = std::numeric_limits<float>::quiet_NaN();
  w[6 * K + 40] = std::numeric_limits<float>::infinity();
  w[7 * K + 41] = -std::numeric_limits<float>::infinity();
  w[8 * K + 2] = 1e-30f;   // far below the block scale: a zero code
  w[9 * K + 9] = 5000.0f;  // the tensor's amax: sets g
  for (int block : {16, 32}) expect_fp4_equal(w, N, K, block, "special values");
  std::vector<float> zeros(static_cast<size_t>(N * K), 0.0f);  // amax 0: g clamps to 1e-9
  for (int block : {16, 32}) expect_fp4_equal(zeros, N, K, block, "all zero");
}

// q/k/v stacked along N into one layer: every part is quantized with its own per-tensor g (held per
// row), so each element's code and scale, and each row's g, equal the part's own host quantization.
TEST(WeightQuant, StackedPartsKeepTheirOwnScale) {
  SKIP_WITHOUT_GPU();
  const int64_t K = 200, parts[] = {96, 40, 40};
  std::vector<float> w;
  std::vector<std::vector<float>> each;
  double sd = 0.01;
  for (int64_t n : parts) {
    each.push_back(random_matrix(n, K, static_cast<uint64_t>(n * 3 + w.size()), sd *= 4));  // different amax per part
    w.insert(w.end(), each.back().begin(), each.back().end());
  }
  const int64_t N = static_cast<int64_t>(w.size()) / K;
  const DeviceBuffer<float> d = upload(w);
  for (int block : {16, 32}) {
    const DeviceFp4Weights g = quantize_fp4_weights(d.get(), N, K, block, nullptr, {parts[0], parts[1], parts[2]});
    Fp4Tiles got;
    got.N = N; got.K = K; got.Np = g.Np; got.Kp = g.Kp; got.block = block;
    got.codes = g.codes.to_host();
    got.scales = g.scales.to_host();
    got.g = g.g.to_host();
    ASSERT_EQ(got.g.size(), static_cast<size_t>(N));
    int64_t r0 = 0;
    size_t bad = 0;
    for (size_t p = 0; p < each.size(); ++p) {
      const int64_t n = parts[p];
      const Fp4Tiles h = block == 32 ? pack_fp4_tiles(quantize_matrix<Nvfp4_32>(each[p].data(), n, K, GlobalScale::per_tensor))
                                     : pack_fp4_tiles(quantize_matrix<Nvfp4_16>(each[p].data(), n, K, GlobalScale::per_tensor));
      for (int64_t r = 0; r < n; ++r) {
        bad += f32_bits(got.g[static_cast<size_t>(r0 + r)]) != f32_bits(h.g[0]);
        for (int64_t k = 0; k < K; ++k)
          bad += fp4_tiles_code(got, r0 + r, k) != fp4_tiles_code(h, r, k) || fp4_tiles_scale(got, r0 + r, k) != fp4_tiles_scale(h, r, k);
      }
      r0 += n;
    }
    EXPECT_EQ(bad, 0u) << "block " << block;
    EXPECT_NE(got.g[0], got.g[static_cast<size_t>(parts[0])]) << "the parts' scales differ";
  }
  EXPECT_THROW(quantize_fp4_weights(d.get(), N, K, 16, nullptr, {parts[0], parts[1]}), std::invalid_argument);
  EXPECT_THROW(quantize_fp4_weights(d.get(), N, K, 16, nullptr, {N, 0}), std::invalid_argument);
}

// Every projection of the first and the last layer of a real checkpoint.
void check_checkpoint(const std::string& path) {
  if (FILE* f = std::fopen(path.c_str(), "rb")) std::fclose(f);
  else GTEST_SKIP() << "no " << path;
  const ModelWeights mw = load_model_weights(path);
  for (int64_t l : {int64_t{0}, mw.config.num_layers - 1}) {
    const LayerWeights lw = mw.layer(l);
    for (const TensorView* t : {lw.q, lw.k, lw.v, lw.o, lw.gate, lw.up, lw.down}) {
      const std::vector<float> w = to_f32(*t);
      for (int block : {16, 32})
        expect_fp4_equal(w, t->shape[0], t->shape[1], block, path + " layer " + std::to_string(l));
      // fp8 per channel, K padded to 16 and N to 8 as GpuLinear does
      const int64_t N = t->shape[0], K = t->shape[1], ld = (K + 15) / 16 * 16, Np = (N + 7) / 8 * 8;
      const DeviceBuffer<float> d = upload(w);
      DeviceBuffer<uint8_t> codes(static_cast<size_t>(Np * ld));
      DeviceBuffer<float> scales(static_cast<size_t>(Np));
      quantize_fp8_weights(d.get(), N, K, Np, ld, codes.get(), scales.get(), nullptr);
      const std::vector<uint8_t> gc = codes.to_host();
      const std::vector<float> gsc = scales.to_host();
      std::vector<uint8_t> hc(static_cast<size_t>(K));
      size_t bad = 0;
      for (int64_t n = 0; n < N; ++n) {
        const float s = fp8_quantize_row(w.data() + n * K, K, hc.data());
        bad += f32_bits(s) != f32_bits(gsc[static_cast<size_t>(n)]);
        for (int64_t k = 0; k < ld; ++k) bad += gc[static_cast<size_t>(n * ld + k)] != (k < K ? hc[static_cast<size_t>(k)] : 0);
      }
      EXPECT_EQ(bad, 0u) << path << ": fp8 codes or scales differ";
    }
  }
}

TEST(WeightQuant, MatchesTheHostOnStories260k) {
  SKIP_WITHOUT_GPU();
  check_checkpoint(std::string(SHARQ_SOURCE_DIR) + "/../shared/models/stories260K/stories260K.bin");
}

TEST(WeightQuant, MatchesTheHostOnSharqLm30m) {
  SKIP_WITHOUT_GPU();
  check_checkpoint(std::string(SHARQ_SOURCE_DIR) + "/../shared/models/sharq-lm-30m");
}

TEST(WeightQuant, Fp8PaddingAndSpecialRows) {
  SKIP_WITHOUT_GPU();
  const int64_t N = 5, K = 20, Np = 8, ld = 32;
  std::vector<float> w = random_matrix(N, K, 5, 2.0);
  for (int64_t k = 0; k < K; ++k) w[static_cast<size_t>(K + k)] = 0.0f;  // zero row: scale 1
  w[2 * K + 3] = std::numeric_limits<float>::quiet_NaN();
  w[3 * K + 4] = std::numeric_limits<float>::infinity();
  const DeviceBuffer<float> d = upload(w);
  DeviceBuffer<uint8_t> codes(static_cast<size_t>(Np * ld));
  DeviceBuffer<float> scales(static_cast<size_t>(Np));
  quantize_fp8_weights(d.get(), N, K, Np, ld, codes.get(), scales.get(), nullptr);
  const std::vector<uint8_t> gc = codes.to_host();
  const std::vector<float> gs = scales.to_host();
  std::vector<uint8_t> hc(static_cast<size_t>(K));
  for (int64_t n = 0; n < Np; ++n) {
    const float s = n < N ? fp8_quantize_row(w.data() + n * K, K, hc.data()) : 1.0f;
    EXPECT_EQ(f32_bits(gs[static_cast<size_t>(n)]), f32_bits(s)) << "row " << n;
    for (int64_t k = 0; k < ld; ++k)
      EXPECT_EQ(gc[static_cast<size_t>(n * ld + k)], n < N && k < K ? hc[static_cast<size_t>(k)] : 0) << n << "," << k;
  }
  EXPECT_EQ(gs[1], 1.0f);
  EXPECT_EQ(gc[static_cast<size_t>(2 * ld + 3)], 0x7F) << "NaN keeps the NaN code";
  EXPECT_EQ(gc[static_cast<size_t>(3 * ld + 4)], 0x7F) << "Inf becomes the NaN code, never 448";
}

TEST(WeightQuant, SixteenBitConversionIsTheHostEncoder) {
  SKIP_WITHOUT_GPU();
  std::vector<float> w = random_matrix(1, 5000, 7, 3.0);
  const float specials[] = {0.0f, -0.0f, 1e-8f, -3e-6f, 6.0e-8f, 65504.0f, 65520.0f, 1e6f, 3.0e38f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min()};
  for (float s : specials) w.push_back(s);
  const DeviceBuffer<float> d = upload(w);
  DeviceBuffer<uint16_t> out(w.size());
  for (bool fp16 : {false, true}) {
    convert_weights_16(d.get(), static_cast<int64_t>(w.size()), fp16, out.get(), nullptr);
    const std::vector<uint16_t> h = out.to_host();
    size_t bad = 0;
    for (size_t i = 0; i < w.size(); ++i) bad += h[i] != (fp16 ? fp16_encode(w[i]) : bf16_encode(w[i]));
    EXPECT_EQ(bad, 0u) << (fp16 ? "fp16" : "bf16");
  }
}

TEST(WeightQuant, SyntheticFillIsDeterministicAndInRange) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1 << 20;
  DeviceBuffer<float> a(n), b(n), c(n);
  fill_synthetic(a.get(), n, 5, 0.02f, 1.0f, nullptr);
  fill_synthetic(b.get(), n, 5, 0.02f, 1.0f, nullptr);
  fill_synthetic(c.get(), n, 6, 0.02f, 1.0f, nullptr);
  const std::vector<float> ha = a.to_host(), hb = b.to_host(), hc = c.to_host();
  EXPECT_EQ(ha, hb);
  EXPECT_NE(ha, hc);
  double mean = 0.0, lo = 2.0, hi = 0.0;
  for (float v : ha) {
    mean += v;
    lo = std::min<double>(lo, v);
    hi = std::max<double>(hi, v);
  }
  mean /= static_cast<double>(n);
  EXPECT_NEAR(mean, 1.0, 1e-4);
  EXPECT_GE(lo, 0.98);
  EXPECT_LT(hi, 1.02);
  EXPECT_GT(hi - lo, 0.0399);
}

TEST(WeightQuant, BadArgumentsThrow) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<float> d(64);
  EXPECT_THROW(quantize_fp4_weights(nullptr, 4, 16, 16, nullptr), std::invalid_argument);
  EXPECT_THROW(quantize_fp4_weights(d.get(), 4, 16, 8, nullptr), std::invalid_argument);
  EXPECT_THROW(quantize_fp4_weights(d.get(), 0, 16, 16, nullptr), std::invalid_argument);
  DeviceBuffer<uint8_t> codes(64);
  DeviceBuffer<float> sc(8);
  EXPECT_THROW(quantize_fp8_weights(d.get(), 4, 16, 2, 16, codes.get(), sc.get(), nullptr), std::invalid_argument);
  EXPECT_THROW(quantize_fp8_weights(d.get(), 4, 16, 4, 8, codes.get(), sc.get(), nullptr), std::invalid_argument);
  EXPECT_THROW(convert_weights_16(nullptr, 4, true, nullptr, nullptr), std::invalid_argument);
  EXPECT_THROW(fill_synthetic(nullptr, 4, 1, 1.0f, 0.0f, nullptr), std::invalid_argument);
}

}  // namespace
