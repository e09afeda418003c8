// The one error type of the model loaders (config.json, safetensors, llama2.c, ModelWeights).
// Its message always names the file and the field or tensor at fault.
#pragma once

#include <stdexcept>

namespace sharq {

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace sharq
