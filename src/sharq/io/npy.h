// NumPy .npy arrays (format versions 1.0, 2.0 and 3.0), C order, little-endian.
//
// Reading accepts float32 ('<f4'), float16 ('<f2'), float64 ('<f8') and bfloat16 (descr
// 'bfloat16', or '<V2' / '|V2' as written by ml_dtypes) and converts to float32. The header is
// parsed as the Python dict literal it is (strictly: string keys; string, True/False and
// tuple-of-int values; the last of duplicate keys wins; other keys are ignored). Any dimension may
// be 0 (an empty array). Every length and offset is checked against the file size; any problem
// throws NpyError naming the file and field. Only regular files are read.
// Writing produces version 1.0 float32 files.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sharq {

struct NpyError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order
  std::string source_dtype; // "float32", "float16", "float64" or "bfloat16"
  int64_t size() const;
};

NpyArray read_npy(const std::string& path);
// Parse from memory (what read_npy does after reading the file); `name` is used in messages.
NpyArray parse_npy(const uint8_t* bytes, size_t n, const std::string& name);

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace sharq
