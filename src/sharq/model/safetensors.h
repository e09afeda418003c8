// safetensors files: an 8-byte little-endian header length N, N bytes of JSON
// {"tensor name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section the offsets index into.
//
// Every length and offset is checked against the bytes present, and the tensors' byte ranges may
// not overlap. Tensors must be F32, F16 or BF16. Any problem throws CheckpointError naming the
// file and the tensor or field. Nothing is copied: the result views the input bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "sharq/model/mapped_file.h"
#include "sharq/model/weights.h"

namespace sharq {

// The format's own cap on the header (the reference implementation refuses larger ones).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Every tensor of the file, as views into bytes[0, n); `name` is used in messages.
std::map<std::string, TensorView> parse_safetensors(const uint8_t* bytes, size_t n, const std::string& name);

// A mapped safetensors file and its tensors (views into `file`).
struct SafetensorsFile {
  std::shared_ptr<const MappedFile> file;
  std::map<std::string, TensorView> tensors;
};
SafetensorsFile open_safetensors(const std::string& path);

}  // namespace sharq
