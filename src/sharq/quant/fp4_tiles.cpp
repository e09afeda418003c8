#include "sharq/quant/fp4_tiles.h"

#include <stdexcept>

#include <fmt/format.h>

namespace sharq {
namespace {

// Byte offset of element (n, k) inside the codes array, and whether it is the high nibble.
struct CodePos { size_t byte; bool high; };

CodePos code_pos(const Fp4Tiles& t, int64_t n, int64_t k) {
  const int64_t tile = (n / 8) * t.k_tiles() + k / 128;
  const int r = static_cast<int>(n % 8), c = static_cast<int>(k % 128);
  const int j = c / 32, w = c % 32;          // word j, column inside the sub-block
  const int p = w / 8, q = (w % 8) / 2, hi = w % 2;
  const int lane = r * 4 + q;
  const int nib = p + 4 * hi;                // nibble inside the little-endian word
  return {static_cast<size_t>(tile) * 512 + static_cast<size_t>(lane) * 16 + static_cast<size_t>(j) * 4 +
              static_cast<size_t>(nib / 2),
          (nib % 2) != 0};
}

size_t scale_pos(const Fp4Tiles& t, int64_t n, int64_t k) {
  const int64_t tile = (n / 8) * t.k_tiles() + k / 128;
  const int per_row = 128 / t.block;
  return static_cast<size_t>(tile) * static_cast<size_t>(t.scale_bytes_per_tile()) +
         static_cast<size_t>((n % 8) * per_row + (k % 128) / t.block);
}

template <class F>
Fp4Tiles pack(const QuantizedMatrix<F>& w) {
  if (w.rows <= 0 || w.cols <= 0)
    throw std::invalid_argument(fmt::format("pack_fp4_tiles: empty matrix N = {}, K = {}", w.rows, w.cols));
  Fp4Tiles t;
  t.N = w.rows;
  t.K = w.cols;
  t.Np = ceil_div(w.rows, int64_t{Fp4Tiles::kRowPad}) * Fp4Tiles::kRowPad;
  t.Kp = ceil_div(w.cols, 128) * 128;
  t.block = F::kBlock;
  t.g = w.g;
  const size_t tiles = static_cast<size_t>(t.Np / 8 * t.k_tiles());
  t.codes.assign(tiles * 512, 0);
  t.scales.assign(tiles * static_cast<size_t>(t.scale_bytes_per_tile()), 0);
  for (int64_t n = 0; n < t.N; ++n) {
    const auto* row = w.row(n);
    for (int64_t b = 0; b < w.blocks_per_row; ++b) {
      t.scales[scale_pos(t, n, b * F::kBlock)] = row[b].s.e;
      for (int i = 0; i < F::kBlock; ++i) {
        const int64_t k = b * F::kBlock + i;
        const uint8_t code = get_nibble(row[b].qs, i);
        const CodePos pos = code_pos(t, n, k);
        t.codes[pos.byte] = static_cast<uint8_t>(pos.high ? (t.codes[pos.byte] & 0x0F) | (code << 4)
                                                          : (t.codes[pos.byte] & 0xF0) | code);
      }
    }
  }
  return t;
}

}  // namespace

Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Nvfp4_32>& w) { return pack(w); }
Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Nvfp4_16>& w) { return pack(w); }

uint8_t fp4_tiles_code(const Fp4Tiles& t, int64_t n, int64_t k) {
  const CodePos pos = code_pos(t, n, k);
  return pos.high ? static_cast<uint8_t>(t.codes[pos.byte] >> 4) : static_cast<uint8_t>(t.codes[pos.byte] & 0x0F);
}

uint8_t fp4_tiles_scale(const Fp4Tiles& t, int64_t n, int64_t k) { return t.scales[scale_pos(t, n, k)]; }

std::vector<float> fp4_tiles_dequantize(const Fp4Tiles& t) {
  std::vector<float> w(static_cast<size_t>(t.N * t.K));
  for (int64_t n = 0; n < t.N; ++n)
    for (int64_t k = 0; k < t.K; ++k)
      w[static_cast<size_t>(n * t.K + k)] = e2m1_decode(fp4_tiles_code(t, n, k)) * ue4m3_decode(fp4_tiles_scale(t, n, k));
  return w;
}

}  // namespace sharq
