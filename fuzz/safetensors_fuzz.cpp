// libFuzzer target: any byte string must either parse or throw CheckpointError; anything else
// (a crash, a sanitizer report, another exception escaping) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "sharq/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tensors = sharq::parse_safetensors(data, size, "fuzz.safetensors");
    // every view lies inside the input and holds exactly its shape's elements; converting it
    // touches every byte, so a bad range shows up under ASan
    volatile float sink = 0.0f;
    for (const auto& [name, t] : tensors) {
      if (t.bytes != static_cast<size_t>(t.numel()) * sharq::dtype_bytes(t.dtype)) std::abort();
      if (t.bytes && (t.data < data || t.data + t.bytes > data + size)) std::abort();
      const std::vector<float> v = sharq::to_f32(t);
      if (!v.empty()) sink = sink + v.front() + v.back();
    }
  } catch (const sharq::CheckpointError&) {
  }
  return 0;
}
