// The GPU weight layout of an FP4 matrix: the same codes and scale bytes as QuantizedMatrix,
// permuted so that one 16-byte load per lane feeds the tensor-core fragments (Marlin-style).
// NVFP4 (UE4M3 block scales, blocks of 16 or 32, FP32 second-level g) and MXFP4 (UE8M0 block
// scales 2^(e - 127), blocks of 32, no g) share it: only the meaning of a scale byte differs
// (Fp4Tiles::scale). The GPU GEMMs decode UE4M3 scales only so far and refuse UE8M0 tiles.
//
// This is THE packed FP4 weight layout of sharq: every GPU kernel family reads it, and it is the only
// form the checkpoint loaders produce for the GPU. A kernel that needs another layout changes this
// one for every family; two copies of a model's weights never coexist (docs/numerics.md).
//
// The matrix (N x K, nn.Linear layout) is cut into tiles of 8 rows x 128 columns; K is padded with
// zero codes and zero scales up to Kp = ceil(K / 128) * 128 and N with zero rows up to
// Np = ceil(N / 128) * 128 (one CTA's 128 weight rows), so any N works (exact: padded products are
// 0 * 0; the kernels never write output columns >= N). Tile t = (n / 8) * (Kp / 128) + k / 128.
//
//   codes  512 bytes per tile. Lane L (0..31) of a warp owns row r = L / 4 and q = L % 4; its
//          16 bytes are 4 little-endian words, word j covering the 32-column sub-block j of the
//          tile. Nibble p (0..3) of word j holds column 32 j + 8 p + 2 q, nibble p + 4 holds the
//          next column. So (word >> 4 p) & 0x000F000F puts the pair {col, col + 1} into the low
//          and high 16-bit halves: exactly the B fragment b0,b1 (p = 0, 2) / b2,b3 (p = 1, 3) of
//          mma.m16n8k16 for the k16 step 2 j + p / 2, and the pairs a wgmma B tile stores.
//   scales the scale bytes of the tile's blocks, row-major [8 rows][128 / block] (32 bytes for
//          32-element blocks, NVFP4-W32 or MXFP4; 64 bytes for NVFP4-W16), tile after tile.
//
// Nothing is re-rounded: fp4_tiles_code / fp4_tiles_scale give back the QuantizedMatrix bytes (tested).
#pragma once

#include <cstdint>
#include <vector>

#include "sharq/core/hd.h"
#include "sharq/quant/quantized_matrix.h"

namespace sharq {

// Where element (n, k) of a tiled matrix with k_tiles = Kp / 128 tiles per row of tiles lives: the
// byte of `codes` holding its code (high nibble or low), and the byte of `scales` holding the scale
// of its block. One definition for the host packer and the GPU weight quantizer
// (kernels/cuda/weight_quant.h). For 16- and 32-element blocks, every code byte holds two codes
// of the same block, so a packer that writes whole blocks owns whole bytes.
struct Fp4CodePos {
  int64_t byte;
  bool high;
};
SHARQ_HD Fp4CodePos fp4_tile_code_pos(int64_t k_tiles, int64_t n, int64_t k) {
  const int64_t tile = (n / 8) * k_tiles + k / 128;
  const int r = static_cast<int>(n % 8), c = static_cast<int>(k % 128);
  const int j = c / 32, w = c % 32;  // word j, column inside the 32-column sub-block
  const int p = w / 8, q = (w % 8) / 2, hi = w % 2;
  const int lane = r * 4 + q;
  const int nib = p + 4 * hi;  // nibble inside the little-endian word
  return {tile * 512 + lane * 16 + j * 4 + nib / 2, (nib % 2) != 0};
}
SHARQ_HD int64_t fp4_tile_scale_pos(int64_t k_tiles, int block, int64_t n, int64_t k) {
  const int64_t tile = (n / 8) * k_tiles + k / 128;
  const int per_row = 128 / block;
  return tile * (8 * per_row) + (n % 8) * per_row + (k % 128) / block;
}

// What a scale byte of Fp4Tiles means.
enum class Fp4Scale : uint8_t {
  ue4m3,  // NVFP4: ue4m3_decode(byte), times the second-level g
  ue8m0,  // MXFP4: ue8m0_decode(byte) = 2^(byte - 127), 255 NaN; no g
};

struct Fp4Tiles {
  int64_t N = 0, K = 0, Np = 0, Kp = 0;
  int block = 32;                 // scale group: 32 (SharQ's W32 payload, MXFP4) or 16 (NVFP4 baseline)
  Fp4Scale scale = Fp4Scale::ue4m3;
  std::vector<uint8_t> codes;     // (Np / 8) * (Kp / 128) * 512
  std::vector<uint8_t> scales;    // (Np / 8) * (Kp / 128) * 8 * (128 / block)
  std::vector<float> g;           // NVFP4's second-level scale(s): 1 (per tensor) or N (per row); MXFP4: empty

  static constexpr int kTileRows = 8, kTileCols = 128, kTileCodeBytes = 512, kRowPad = 128;
  int64_t k_tiles() const { return Kp / kTileCols; }
  int scale_bytes_per_tile() const { return kTileRows * (kTileCols / block); }
  size_t bytes() const { return codes.size() + scales.size() + g.size() * sizeof(float); }
};

// Throws std::invalid_argument for an empty matrix, or an MXFP4 one that carries a second-level g.
Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Nvfp4_32>& w);
Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Nvfp4_16>& w);
Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Mxfp4>& w);

// The inverse, for tests: 4-bit code and scale byte of element (n, k) of the tiled matrix
// (n < Np, k < Kp; the padding reads 0).
uint8_t fp4_tiles_code(const Fp4Tiles& t, int64_t n, int64_t k);
uint8_t fp4_tiles_scale(const Fp4Tiles& t, int64_t n, int64_t k);

// Dequantized W^ (N x K, scaled domain: g not applied), for references.
std::vector<float> fp4_tiles_dequantize(const Fp4Tiles& t);

}  // namespace sharq
