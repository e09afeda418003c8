// libFuzzer target: any byte string must either parse or throw CheckpointError; anything else
// (a crash, a sanitizer report, another exception escaping) is a bug.
#include <cstddef>
#include <cstdint>

#include "sharq/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tensors = sharq::parse_safetensors(data, size, "fuzz.safetensors");
    // touch every converted value so that a short allocation shows up under ASan
    volatile float sink = 0.0f;
    for (const auto& [name, t] : tensors)
      if (!t.data.empty()) sink = sink + t.data.front() + t.data.back() + static_cast<float>(t.numel() - static_cast<int64_t>(t.data.size()));
  } catch (const sharq::CheckpointError&) {
  }
  return 0;
}
