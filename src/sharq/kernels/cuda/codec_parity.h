// Device-side runs of the shared SHARQ_HD codecs, block quantizers and SharQ span preparation.
//
// These are not performance kernels: one thread per value / block, so that tests can prove that
// the device executes the very same numerics as the CPU reference (bit for bit). The fused prep
// kernel and the GEMMs of the Hopper issue build on the same functions.
#pragma once

#include <cstdint>
#include <vector>

#include "sharq/decompose/sharq_decompose.h"

namespace sharq::cuda {

struct ElementCodes {
  std::vector<uint8_t> e2m1, e4m3, e6m2, s1p2;
  std::vector<uint16_t> bf16, fp16;
  std::vector<float> e2m1_dec, e4m3_dec;  // decode of the code in the low bits of the input index
};
// Encode every x with every element codec on the device; decode codes (i & 0xF / i & 0xFF).
ElementCodes encode_on_device(const std::vector<float>& x);

// Quantize rows x cols (cols a multiple of the block) on the device, one thread per block.
std::vector<block_nvfp4_16> nvfp4_16_quantize_on_device(const std::vector<float>& x, int64_t rows, int64_t cols);
std::vector<block_mxfp4> mxfp4_quantize_on_device(const std::vector<float>& x, int64_t rows, int64_t cols);
std::vector<block_hif4> hif4_quantize_on_device(const std::vector<float>& x, int64_t rows, int64_t cols);

// mxfp4_fold_tile (quant/fp8_fold.h) over consecutive tiles of kFoldBlocks blocks (blocks.size() a
// multiple of kFoldBlocks), one thread per tile: 128 E4M3 codes per tile, and per tile {t, nonzero,
// inexact, nan}.
struct DeviceFold {
  std::vector<uint8_t> codes;
  std::vector<int32_t> t, nonzero, inexact, nan;
};
DeviceFold mxfp4_fold_on_device(const std::vector<block_mxfp4>& blocks);
// sharq_prepare_span over rows x cols of X~ (cols a multiple of 32), NVFP4, pair-4:8.
void sharq_nvfp4_p48_prepare_on_device(const std::vector<float>& xt, int64_t rows, int64_t cols,
                                       std::vector<block_bb_nvfp4_p48>& backbone, std::vector<block_nvfp4_16>& residual);

}  // namespace sharq::cuda
