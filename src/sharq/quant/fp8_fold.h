// MXFP4 on FP8 tensor cores (the MXFP4/HiF4 GPU issue): a tile of kFoldBlocks MXFP4-32 blocks of
// one row (128 values along K) held as E4M3 values times ONE power-of-two FP32 tile scale, which
// the kernel applies when it promotes a k-tile's FP32 partial sums. The scale is per row for both
// operands: the FP4 GEMMs take the weights as wgmma's M side (64 rows per instruction), so a
// weight row's scale is an accumulator row's, as DeepGEMM's per-token activation scales are (not
// its 128 x 128 weight blocks, over which a shared scale would span 128 rows).
//
// Block j has scale 2^(e_j - 127) (UE8M0 code e_j). With e_max the largest code among the tile's
// blocks that hold a nonzero element, the tile scale is 2^t, t = e_max - 127 - 6, and element k of
// block j becomes the E4M3 code of
//     E2M1(c_k) * 2^d_j,   d_j = e_j - e_max + 6 <= 6.
// That product never overflows E4M3 (6 * 2^6 = 384 < 448). It is exact iff its lowest set bit is
// at or above 2^-9, E4M3's smallest subnormal: l(c) + d_j >= -9, with l(c) the exponent of the
// lowest set bit of |E2M1(c)| (0.5: -1, 1: 0, 1.5: -1, 2: 1, 3: 0, 4: 2, 6: 1). So every element of
// a block is exact when d_j >= -8 (tests/quant/block_quant_test.cpp, TensorCoreExactness), and a
// block more than 2^14 below the tile's largest (d_j <= -9) loses codes: at d_j = -9, 0.5 and 1.5
// (0.5 x 2^-9 = 2^-10 flushes to 0, a tie to even; 1.5 x 2^-9 rounds up to 2^-8), more codes
// below. They round to nearest even in E4M3, to 0 at or below 2^-10 (the flush). `inexact` counts
// those elements, so a caller can send such a tile down the BF16 path instead (every MXFP4 value is
// a BF16 value) or accept it.
//
// e4m3_decode(code) * 2^t reproduces the MXFP4 value bit for bit for every exact element (both are
// E2M1 x 2^(e_j - 127), at least 2^-128: no FP32 rounding on either side).
#pragma once

#include <cstdint>

#include "sharq/core/hd.h"
#include "sharq/formats/minifloat.h"
#include "sharq/quant/block_quant.h"

namespace sharq {

inline constexpr int kFoldBlocks = 4;
inline constexpr int kFoldTile = kFoldBlocks * Mxfp4::kBlock;  // 128 values along K

struct Mxfp4Fold {
  int t = 0;          // the tile's element k is e4m3_decode(code_k) * 2^t
  int nonzero = 0;    // elements with a nonzero E2M1 magnitude (in blocks with a finite scale)
  int inexact = 0;    // of those, the ones whose E4M3 code is not exactly E2M1 x 2^d (rounded or flushed)
  bool nan = false;   // a block has the NaN scale: its codes are the E4M3 NaN (0x7F)
};

// 2^d as FP32 for any integer d (0 below the subnormal range, +Inf above the normal range).
SHARQ_HD float pow2_f32(int d) {
  if (d < -149) return 0.0f;
  if (d < -126) return f32_from_bits(1u << (d + 149));
  if (d > 127) return f32_from_bits(0x7F800000u);
  return f32_from_bits(static_cast<uint32_t>(d + 127) << 23);
}

// Exponent of the lowest set bit of |E2M1(code)| (code & 7 != 0).
SHARQ_HD int e2m1_low_exp(uint8_t code) {
  // magnitudes 0.5, 1, 1.5, 2, 3, 4, 6 -> -1, 0, -1, 1, 0, 2, 1 (4 bits each, stored + 1)
  return static_cast<int>((0x23120100u >> (4u * (code & 7u))) & 0xFu) - 1;
}

// Folds nblocks (1 .. kFoldBlocks; fewer at a row's tail) consecutive MXFP4 blocks into
// nblocks * 32 E4M3 codes.
SHARQ_HD Mxfp4Fold mxfp4_fold_tile(const Mxfp4::block_t* b, int nblocks, uint8_t* e4m3) {
  Mxfp4Fold f;
  int e_max = -1;
  for (int j = 0; j < nblocks; ++j) {
    if (b[j].s.e == kUe8m0Nan) {
      f.nan = true;
      continue;
    }
    bool any = false;
    for (int i = 0; i < 16; ++i) any = any || (b[j].qs[i] & 0x77u) != 0;
    if (any && static_cast<int>(b[j].s.e) > e_max) e_max = b[j].s.e;
  }
  if (e_max < 0) e_max = 6;  // no nonzero element: t = -127, every code +-0
  f.t = e_max - 127 - 6;
  for (int j = 0; j < nblocks; ++j) {
    const bool nan_block = b[j].s.e == kUe8m0Nan;
    const int d = static_cast<int>(b[j].s.e) - e_max + 6;
    const float p = pow2_f32(d);
    for (int k = 0; k < Mxfp4::kBlock; ++k) {
      const uint8_t c = get_nibble(b[j].qs, k);
      uint8_t out;
      if (nan_block) {
        out = 0x7F;
      } else if ((c & 7u) == 0) {
        out = static_cast<uint8_t>((c & 8u) << 4);  // +-0 keeps its sign
      } else {
        ++f.nonzero;
        if (e2m1_low_exp(c) + d < -9) ++f.inexact;
        // exact: the product is exact in FP32 and in E4M3; inexact: exact in FP32 down to 2^-126
        // (below that it may round in FP32, but it flushes to 0 in E4M3 either way), so
        // e4m3_encode rounds the real value once
        out = e4m3_encode(e2m1_decode(c) * p);
      }
      e4m3[j * Mxfp4::kBlock + k] = out;
    }
  }
  return f;
}

// The value a folded element stands for: e4m3_decode(code) * 2^t.
SHARQ_HD float mxfp4_unfold(uint8_t code, int t) { return e4m3_decode(code) * pow2_f32(t); }

}  // namespace sharq
