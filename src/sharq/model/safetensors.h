// safetensors files: an 8-byte little-endian header length N, N bytes of JSON
// {"tensor name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section the offsets index into.
//
// Every length and offset is checked against the bytes present, and the tensors' byte ranges may
// not overlap, so the FP32 output is never more than twice the input. Tensors must be F32, F16 or
// BF16. Any problem throws CheckpointError naming the file and the tensor or field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "sharq/model/checkpoint.h"

namespace sharq {

// The format's own cap on the header (the reference implementation refuses larger ones).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Every tensor of the file, converted to FP32; `name` is used in messages.
std::map<std::string, Tensor> parse_safetensors(const uint8_t* bytes, size_t n, const std::string& name);
std::map<std::string, Tensor> read_safetensors(const std::string& path);

}  // namespace sharq
