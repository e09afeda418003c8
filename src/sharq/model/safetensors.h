// safetensors files: an 8-byte little-endian header length N, N bytes of JSON
// {"tensor name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section the offsets index into.
//
// Every length and offset is checked against the bytes present, and the tensors' byte ranges may
// not overlap. Tensors must be F32, F16, BF16, U8, I8 or F8_E4M3. Any problem throws CheckpointError naming the
// file and the tensor or field. Nothing is copied: the result views the input bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
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

// ---- writer -------------------------------------------------------------------------------------
// One tensor to write: numel(shape) * dtype_bytes(dtype) bytes, taken from `data` (a view the caller
// keeps alive until write_safetensors returns) or, when `data` is null, produced by `fill` into a
// buffer of that size at the moment the tensor is written (so that a large model is converted one
// tensor at a time).
struct SafetensorsTensorOut {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  std::function<void(uint8_t* out)> fill;
};

// Writes a safetensors file: the header JSON (nlohmann-json; "__metadata__" holds `metadata`, string
// to string, as the format requires), padded with spaces so that the data section starts at a
// multiple of 8 bytes, then the tensors back to back (the format forbids gaps) ordered by element
// size, largest first, then by name, so that every tensor starts aligned to its element size.
// Writes `path` + ".tmp" and renames it over `path`, so a failed write leaves no partial file under
// the final name. Throws std::runtime_error naming the file (and the tensor) on any problem: a
// duplicate or empty name, "__metadata__" as a tensor name, a negative dimension, an I/O error.
// Returns the number of bytes written.
uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsTensorOut>& tensors,
                           const std::map<std::string, std::string>& metadata = {});

}  // namespace sharq
