#include "sharq/quant/fp4_tiles.h"

#include <stdexcept>
#include <type_traits>

#include <fmt/format.h>

namespace sharq {
namespace {

Fp4CodePos code_pos(const Fp4Tiles& t, int64_t n, int64_t k) { return fp4_tile_code_pos(t.k_tiles(), n, k); }

size_t scale_pos(const Fp4Tiles& t, int64_t n, int64_t k) {
  return static_cast<size_t>(fp4_tile_scale_pos(t.k_tiles(), t.block, n, k));
}

template <class F>
Fp4Tiles pack(const QuantizedMatrix<F>& w) {
  if (w.rows <= 0 || w.cols <= 0)
    throw std::invalid_argument(fmt::format("pack_fp4_tiles: empty matrix N = {}, K = {}", w.rows, w.cols));
  if (!F::kHasGlobal && !w.g.empty())
    throw std::invalid_argument(fmt::format("pack_fp4_tiles: an MXFP4 matrix with {} second-level scales (it has none)", w.g.size()));
  Fp4Tiles t;
  t.N = w.rows;
  t.K = w.cols;
  t.Np = ceil_div(w.rows, int64_t{Fp4Tiles::kRowPad}) * Fp4Tiles::kRowPad;
  t.Kp = ceil_div(w.cols, 128) * 128;
  t.block = F::kBlock;
  t.scale = std::is_same_v<F, Mxfp4> ? Fp4Scale::ue8m0 : Fp4Scale::ue4m3;
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
        const Fp4CodePos pos = code_pos(t, n, k);
        uint8_t& byte = t.codes[static_cast<size_t>(pos.byte)];
        byte = static_cast<uint8_t>(pos.high ? (byte & 0x0F) | (code << 4) : (byte & 0xF0) | code);
      }
    }
  }
  return t;
}

}  // namespace

Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Nvfp4_32>& w) { return pack(w); }
Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Nvfp4_16>& w) { return pack(w); }
Fp4Tiles pack_fp4_tiles(const QuantizedMatrix<Mxfp4>& w) { return pack(w); }

uint8_t fp4_tiles_code(const Fp4Tiles& t, int64_t n, int64_t k) {
  const Fp4CodePos pos = code_pos(t, n, k);
  const uint8_t byte = t.codes[static_cast<size_t>(pos.byte)];
  return pos.high ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0x0F);
}

uint8_t fp4_tiles_scale(const Fp4Tiles& t, int64_t n, int64_t k) { return t.scales[scale_pos(t, n, k)]; }

std::vector<float> fp4_tiles_dequantize(const Fp4Tiles& t) {
  std::vector<float> w(static_cast<size_t>(t.N * t.K));
  const bool mx = t.scale == Fp4Scale::ue8m0;
  for (int64_t n = 0; n < t.N; ++n)
    for (int64_t k = 0; k < t.K; ++k) {
      const uint8_t s = fp4_tiles_scale(t, n, k);
      w[static_cast<size_t>(n * t.K + k)] = e2m1_decode(fp4_tiles_code(t, n, k)) * (mx ? ue8m0_decode(s) : ue4m3_decode(s));
    }
  return w;
}

}  // namespace sharq
