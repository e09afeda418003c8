// libFuzzer target for the config.json parser: it must return a config or throw CheckpointError.
#include <cstddef>
#include <cstdint>
#include <string>

#include "sharq/model/checkpoint_error.h"
#include "sharq/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    sharq::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
  } catch (const sharq::CheckpointError&) {
  }
  return 0;
}
