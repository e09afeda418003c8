// The fp8 scheme's quantizer (quant/scheme.h), one SHARQ_HD definition for the CPU reference, the
// host-side weight packing and the GPU activation kernel: W8A8 E4M3 with one FP32 scale per row
// (per output channel for W, per token for X), scale = amax / 448 over the row's finite values
// (1 for an all-zero row), code = E4M3(x / scale) with round-to-nearest-even and saturation to
// +-448 (SATFINITE). A non-finite input becomes the NaN code 0x7F: SATFINITE alone would turn Inf
// into 448 and hide it.
#pragma once

#include <cstdint>

#include "sharq/core/hd.h"
#include "sharq/formats/minifloat.h"

namespace sharq {

inline constexpr float kFp8Max = 448.0f;

SHARQ_HD float fp8_scale_from_amax(float amax) { return amax > 0.0f ? amax / kFp8Max : 1.0f; }
SHARQ_HD uint8_t fp8_quantize_value(float x, float scale) { return is_nonfinite(x) ? 0x7F : e4m3_encode(x / scale); }

// One row of n values: its codes, and its scale (returned). The host paths (CPU weights and
// activations, the GPU weight packing) all quantize through this; the GPU activation kernel splits
// the same two steps over a block.
SHARQ_HD float fp8_quantize_row(const float* x, int64_t n, uint8_t* codes) {
  const float s = fp8_scale_from_amax(amax_finite(x, static_cast<int>(n)));
  for (int64_t k = 0; k < n; ++k) codes[k] = fp8_quantize_value(x[k], s);
  return s;
}

}  // namespace sharq
