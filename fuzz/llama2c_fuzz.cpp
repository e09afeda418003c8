// libFuzzer target: any byte string must either parse as a llama2.c checkpoint or throw
// CheckpointError; anything else (a crash, a sanitizer report, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "sharq/model/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const sharq::ModelWeights w = sharq::parse_llama2c(data, size, "fuzz.bin");
    // every view must hold exactly its shape's elements, all inside the input (or the one copy of
    // it made for an odd address), without overlapping another view
    const uint8_t* base = w.owned_bytes() ? nullptr : data;
    size_t bytes = 0;
    for (const auto& [name, t] : w.tensors) {
      if (t.dtype != sharq::DType::f32 || t.bytes != static_cast<size_t>(t.numel()) * 4) std::abort();
      if (base && t.bytes && (t.data < base || t.data + t.bytes > base + size)) std::abort();
      bytes += t.bytes;
      volatile float sink = 0.0f;  // read the first and last element: ASan sees a bad range
      if (t.bytes) {
        float f[1];
        sharq::TensorView edge = t;
        edge.bytes = 4;
        sharq::to_f32(edge, f);
        sink = sink + f[0];
        edge.data = t.data + t.bytes - 4;
        sharq::to_f32(edge, f);
        sink = sink + f[0];
      }
    }
    if (bytes > size) std::abort();
  } catch (const sharq::CheckpointError&) {
  }
  return 0;
}
