// The public C++ API of the sharq library in one include (docs/library.md): formats and codecs,
// block quantizers, N:M masks, the SharQ decomposition, the scheme vocabulary, the CPU linear layers,
// model loading, the step API and its CPU executor, generation and perplexity, .npy I/O.
// The CUDA part (sharq::cuda) has its own headers: sharq/runtime/cuda/gpu_linear.h and
// sharq/runtime/cuda/engine.h.
#pragma once

#include "sharq/formats/minifloat.h"
#include "sharq/formats/blocks.h"
#include "sharq/quant/block_quant.h"
#include "sharq/quant/quantized_matrix.h"
#include "sharq/quant/fp8.h"
#include "sharq/quant/fp4_tiles.h"
#include "sharq/quant/scheme.h"
#include "sharq/mask/nm_mask.h"
#include "sharq/decompose/sharq_decompose.h"
#include "sharq/runtime/cpu/linear.h"
#include "sharq/model/config.h"
#include "sharq/model/weights.h"
#include "sharq/model/tokenizer.h"
#include "sharq/runtime/step.h"
#include "sharq/runtime/sampler.h"
#include "sharq/runtime/scheduler.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/tools/generate.h"
#include "sharq/tools/perplexity.h"
#include "sharq/io/npy.h"

namespace sharq {
// The library's version (the CMake project version).
inline constexpr int kVersionMajor = 0, kVersionMinor = 1, kVersionPatch = 0;
}  // namespace sharq
