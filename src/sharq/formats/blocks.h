// Packed block layouts. Each format's layout is stated once, here, with its size asserted.
//
// Conventions (SHARQ_SPEC "Packing FP4 codes"):
//  - blocks run along K; a row of K values is ceil(K / B) consecutive blocks; a matrix is rows of
//    blocks (row-major, array of structs, like ggml);
//  - 4-bit code k of a block sits in qs[k / 2], in the low nibble when k is even (CUDA/CUTLASS);
//  - a K that is not a multiple of B is zero-padded to the next multiple. Padding is exact: a zero
//    adds nothing to a dot product, and an all-zero tail block gets scale 0 (NVFP4) / 2^-127 (MX) /
//    2^-48 (HiF4) with all-zero codes.
#pragma once

#include <cstdint>

#include "sharq/core/hd.h"

namespace sharq {

// ---- scale parts -----------------------------------------------------------------------------
struct scale_ue4m3 { uint8_t e; };        // NVFP4 block scale (E4M3, sign 0); 0x7F = NaN block
struct scale_ue8m0 { uint8_t e; };        // MX block scale 2^(e-127); 0xFF = NaN block
struct scale_hif4 {
  uint8_t sf;      // E6M2 level-1 scale of the 64-unit; 0xFF = NaN unit
  uint8_t e8;      // bit j: level-2 exponent E8[j] (x2) of 8-group j
  uint8_t e16[2];  // bit i (little-endian over the two bytes): level-3 exponent E16[i] of 4-group i
};
static_assert(sizeof(scale_ue4m3) == 1 && sizeof(scale_ue8m0) == 1 && sizeof(scale_hif4) == 4,
              "wrong scale struct size/padding");

// ---- dense FP4 blocks: one scale part + B 4-bit codes ------------------------------------------
template <class Scale, int B>
struct block_fp4 {
  Scale s;            // block scale(s)
  uint8_t qs[B / 2];  // B codes (E2M1 or S1P2), two per byte, even index in the low nibble
};

using block_nvfp4_16 = block_fp4<scale_ue4m3, 16>;  // NVFP4-16: 9 B / 16 values = 4.5 bpw
using block_nvfp4_32 = block_fp4<scale_ue4m3, 32>;  // NVFP4-32 (W32 shared payload): 4.25 bpw
using block_mxfp4    = block_fp4<scale_ue8m0, 32>;  // MXFP4-32: 17 B / 32 values = 4.25 bpw
using block_hif4     = block_fp4<scale_hif4, 64>;   // HiF4-64: 36 B / 64 values = 4.5 bpw
static_assert(sizeof(block_nvfp4_16) == 9, "wrong nvfp4_16 block size/padding");
static_assert(sizeof(block_nvfp4_32) == 17, "wrong nvfp4_32 block size/padding");
static_assert(sizeof(block_mxfp4) == 17, "wrong mxfp4 block size/padding");
static_assert(sizeof(block_hif4) == 36, "wrong hif4 block size/padding");

// ---- sparse backbone blocks ----------------------------------------------------------------------
// One backbone block spans B *logical* K positions of which half are kept (2 of every 4 / 2 pairs
// of every 8). It holds the scale part computed over the logical span (dropped positions are 0,
// so this equals the amax over the kept values), one metadata nibble per mask group, and the B/2
// kept codes in ascending K order.
//   metadata nibble = idx0 | idx1 << 2, idx0 < idx1: pair indices 0..3 (pair-4:8, groups of 8) or
//   element indices 0..3 (scalar 2:4, groups of 4); group g in meta[g / 2], low nibble if g even.
template <class Scale, int B, int Group>
struct block_backbone {
  Scale s;                     // scale over the logical span
  uint8_t meta[B / Group / 2]; // one nibble per mask group
  uint8_t qs[B / 4];           // B/2 kept codes, two per byte
};

using block_bb_nvfp4_p48 = block_backbone<scale_ue4m3, 32, 8>;  // 11 B / 32 logical
using block_bb_nvfp4_s24 = block_backbone<scale_ue4m3, 32, 4>;  // 13 B / 32 logical
using block_bb_mxfp4_p48 = block_backbone<scale_ue8m0, 32, 8>;
using block_bb_mxfp4_s24 = block_backbone<scale_ue8m0, 32, 4>;
using block_bb_hif4_p48  = block_backbone<scale_hif4, 64, 8>;   // 24 B / 64 logical
using block_bb_hif4_s24  = block_backbone<scale_hif4, 64, 4>;   // 28 B / 64 logical
static_assert(sizeof(block_bb_nvfp4_p48) == 11, "wrong backbone block size/padding");
static_assert(sizeof(block_bb_nvfp4_s24) == 13, "wrong backbone block size/padding");
static_assert(sizeof(block_bb_mxfp4_p48) == 11, "wrong backbone block size/padding");
static_assert(sizeof(block_bb_mxfp4_s24) == 13, "wrong backbone block size/padding");
static_assert(sizeof(block_bb_hif4_p48) == 24, "wrong backbone block size/padding");
static_assert(sizeof(block_bb_hif4_s24) == 28, "wrong backbone block size/padding");

// Nibble access shared by codes and metadata.
SHARQ_HD uint8_t get_nibble(const uint8_t* p, int k) {
  return static_cast<uint8_t>((p[k >> 1] >> ((k & 1) * 4)) & 0xF);
}
SHARQ_HD void set_nibble(uint8_t* p, int k, uint8_t v) {
  const int sh = (k & 1) * 4;
  p[k >> 1] = static_cast<uint8_t>((p[k >> 1] & ~(0xF << sh)) | ((v & 0xF) << sh));
}

}  // namespace sharq
