// The device runs the very same SHARQ_HD codecs, block quantizers and SharQ span preparation as
// the CPU reference: every code, scale and metadata byte must be identical. Label `gpu`; skips
// cleanly where there is no GPU.
#include "sharq/kernels/cuda/codec_parity.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "../../support/gpu_test.h"
#include "sharq/kernels/cuda/cuda_check.h"
#include "sharq/quant/fp8_fold.h"
#include "sharq/tools/opcheck.h"

namespace {

using namespace sharq;

template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TEST(CudaParity, ElementCodecsMatchTheHostOnASweepAndSpecials) {
  SKIP_WITHOUT_GPU();
  std::vector<float> x;
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 4099) {  // ~1.05e6 patterns over every exponent
    float f;
    const uint32_t b = static_cast<uint32_t>(u);
    std::memcpy(&f, &b, 4);
    x.push_back(f);
  }
  for (float f : {0.0f, -0.0f, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, 448.0f, 464.0f, 480.0f, 65504.0f,
                  65520.0f, 1e-40f, 3.5527136788005009e-15f})
    x.push_back(f);
  const auto d = cuda::encode_on_device(x);
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(d.e2m1[i], e2m1_encode(x[i])) << i;
    ASSERT_EQ(d.e4m3[i], e4m3_encode(x[i])) << i;
    ASSERT_EQ(d.e6m2[i], e6m2_encode(x[i])) << i;
    ASSERT_EQ(d.s1p2[i], s1p2_encode(x[i])) << i;
    ASSERT_EQ(d.bf16[i], bf16_encode(x[i])) << i;
    ASSERT_EQ(d.fp16[i], fp16_encode(x[i])) << i;
    const float e2 = e2m1_decode(i & 0xF), e4 = e4m3_decode(i & 0xFF);
    ASSERT_EQ(f32_bits(d.e2m1_dec[i]), f32_bits(e2)) << i;
    ASSERT_EQ(f32_bits(d.e4m3_dec[i]), f32_bits(e4)) << i;  // NaN too: both build 0x7FC00000
  }
}

TEST(CudaParity, BlockQuantizersMatchTheHostBitForBit) {
  SKIP_WITHOUT_GPU();
  for (int64_t rows : {1, 7, 64}) {
    const int64_t cols = 512;
    auto x = make_outlier_activations(rows, cols, 100 + rows);
    x[3] = std::numeric_limits<float>::quiet_NaN();  // a NaN block must match too
    const auto q16 = quantize_matrix<Nvfp4_16>(x.data(), rows, cols, GlobalScale::none);
    EXPECT_TRUE(same_bytes(cuda::nvfp4_16_quantize_on_device(x, rows, cols), q16.blocks)) << rows;
    const auto qmx = quantize_matrix<Mxfp4>(x.data(), rows, cols, GlobalScale::none);
    EXPECT_TRUE(same_bytes(cuda::mxfp4_quantize_on_device(x, rows, cols), qmx.blocks)) << rows;
    const auto qh = quantize_matrix<Hif4>(x.data(), rows, cols, GlobalScale::none);
    EXPECT_TRUE(same_bytes(cuda::hif4_quantize_on_device(x, rows, cols), qh.blocks)) << rows;
  }
}

// The FP8 fold of MXFP4 tiles (quant/fp8_fold.h) on the device: codes and tile statistics equal the
// host's, on quantized rows with outliers and on tiles whose blocks sit 0 .. 24 scale steps below
// the largest (exact and inexact elements), a NaN block included.
TEST(CudaParity, Mxfp4FoldMatchesTheHostBitForBit) {
  SKIP_WITHOUT_GPU();
  auto x = make_outlier_activations(16, 512, 5);
  x[40] = std::numeric_limits<float>::quiet_NaN();
  std::vector<block_mxfp4> blocks = quantize_matrix<Mxfp4>(x.data(), 16, 512, GlobalScale::none).blocks;
  std::mt19937 rng(9);
  for (int off = 0; off <= 24; ++off)
    for (int j = 0; j < kFoldBlocks; ++j) {
      block_mxfp4 b{};
      b.s.e = static_cast<uint8_t>(j == 0 ? 160 : 160 - off);
      for (int k = 0; k < 32; ++k) set_nibble(b.qs, k, static_cast<uint8_t>(rng() & 0xF));
      blocks.push_back(b);
    }
  const cuda::DeviceFold d = cuda::mxfp4_fold_on_device(blocks);
  const size_t tiles = blocks.size() / kFoldBlocks;
  ASSERT_EQ(d.t.size(), tiles);
  int inexact_tiles = 0;
  for (size_t i = 0; i < tiles; ++i) {
    uint8_t codes[kFoldTile];
    const Mxfp4Fold f = mxfp4_fold_tile(blocks.data() + i * kFoldBlocks, kFoldBlocks, codes);
    EXPECT_EQ(std::memcmp(codes, d.codes.data() + i * kFoldTile, kFoldTile), 0) << "tile " << i;
    EXPECT_EQ(d.t[i], f.t) << "tile " << i;
    EXPECT_EQ(d.nonzero[i], f.nonzero) << "tile " << i;
    EXPECT_EQ(d.inexact[i], f.inexact) << "tile " << i;
    EXPECT_EQ(d.nan[i] != 0, f.nan) << "tile " << i;
    inexact_tiles += f.inexact > 0;
  }
  EXPECT_GT(inexact_tiles, 0);  // the deep offsets exercised the rounding path
}

TEST(CudaParity, SharqSpanPreparationMatchesTheHostBitForBit) {
  SKIP_WITHOUT_GPU();
  const int64_t rows = 33, cols = 1024;
  const auto x = make_outlier_activations(rows, cols, 5);
  const auto a = sharq_prepare<SharqNvfp4, 8>(x.data(), rows, cols, PairScore::max, GlobalScale::per_row);
  std::vector<float> xt(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) xt[r * cols + c] = x[r * cols + c] / a.global(r);
  std::vector<block_bb_nvfp4_p48> bb;
  std::vector<block_nvfp4_16> res;
  cuda::sharq_nvfp4_p48_prepare_on_device(xt, rows, cols, bb, res);
  EXPECT_TRUE(same_bytes(bb, a.backbone));
  EXPECT_TRUE(same_bytes(res, a.residual));
}

TEST(CudaParity, BadShapesAreRejectedBeforeLaunch) {
  EXPECT_THROW(cuda::nvfp4_16_quantize_on_device(std::vector<float>(10), 1, 10), std::invalid_argument);
}

}  // namespace
