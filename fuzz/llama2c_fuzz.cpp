// libFuzzer target: any byte string must either parse as a llama2.c checkpoint or throw
// CheckpointError; anything else (a crash, a sanitizer report, another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "sharq/model/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const sharq::Checkpoint ck = sharq::parse_llama2c(data, size, "fuzz.bin");
    // every tensor must hold exactly its shape's elements, all read from inside the input
    size_t floats = 0;
    for (const auto& [name, t] : ck.tensors) {
      if (static_cast<int64_t>(t.data.size()) != t.numel()) std::abort();
      floats += t.data.size();
    }
    if (floats * 4 > size) std::abort();
  } catch (const sharq::CheckpointError&) {
  }
  return 0;
}
