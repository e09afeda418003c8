// libFuzzer target for the .npy reader: parse_npy must return an array whose data matches its
// shape, or throw NpyError (naming the file and field); nothing else (no other exception, no
// crash, no allocation beyond what the input's size can justify).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "sharq/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const sharq::NpyArray a = sharq::parse_npy(data, size, "fuzz/x.npy");
    int64_t n = 1;
    for (int64_t d : a.shape) {
      if (d < 0) std::abort();
      n *= d;
    }
    if (static_cast<size_t>(n) != a.data.size()) std::abort();  // shape and data disagree
  } catch (const sharq::NpyError&) {
  }
  return 0;
}
