// The weight quantizers on the GPU: a model's weights are quantized once, at load, on the device,
// by the same SHARQ_HD code the CPU runtime runs (quant/block_quant.h, quant/fp8.h,
// formats/minifloat.h), so the packed bytes are bit-identical to the host's (tested on real
// checkpoint weights). The input is an FP32 N x K row-major matrix already on the device (a
// checkpoint tensor widened to FP32 and uploaded, or synthetic weights generated there).
//
//   quantize_fp4_weights   NVFP4-16 or NVFP4-32 blocks with one per-tensor FP32 second-level scale
//                          g = amax_finite / 2688 (quantize_matrix<F>(W, N, K, per_tensor) on the
//                          host), packed in the one GPU weight layout (quant/fp4_tiles.h). Stacked
//                          parts (q/k/v or gate/up along N, fused into one GEMM) each keep their own
//                          per-tensor g, stored per row: every part's bytes equal its own
//                          quantization
//   quantize_fp8_weights   per-output-channel E4M3 (quant/fp8.h), rows padded to ld codes (zero)
//                          and to Np rows (zero codes, scale 1)
//   convert_weights_16     FP16 or BF16, round to nearest even (bf16_encode / fp16_encode)
//   fill_synthetic         deterministic pseudo-random values, for `bench model --synthetic`
//
// These run at load time: they may allocate and synchronize (they are not step kernels).
#pragma once

#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

#include "sharq/kernels/cuda/fp4_gemm.h"

namespace sharq::cuda {

// block: 16 or 32. parts: the row counts of the matrices stacked along N (summing to N), each with
// its own g (then g holds N floats); empty: one matrix, one g. Throws std::invalid_argument for bad
// shapes, parts or a null pointer.
DeviceFp4Weights quantize_fp4_weights(const float* W, int64_t N, int64_t K, int block, cudaStream_t stream,
                                      const std::vector<int64_t>& parts = {});

// codes: Np x ld bytes, scales: Np floats (Np >= N, ld >= K).
void quantize_fp8_weights(const float* W, int64_t N, int64_t K, int64_t Np, int64_t ld, uint8_t* codes, float* scales,
                          cudaStream_t stream);

// out[i] = fp16_encode(W[i]) or bf16_encode(W[i]), n elements.
void convert_weights_16(const float* W, int64_t n, bool fp16, uint16_t* out, cudaStream_t stream);

// out[i] = offset + scale * u(seed, i), u uniform in [-1, 1) from a counter-based hash: the same
// values for the same seed on every run and card.
void fill_synthetic(float* out, int64_t n, uint64_t seed, float scale, float offset, cudaStream_t stream);

}  // namespace sharq::cuda
