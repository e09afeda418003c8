// A whole regular file mapped read-only into memory (POSIX mmap), unmapped on destruction.
//
// Checkpoint tensors are viewed in place inside these mappings (weights.h): an 8B BF16 model costs
// its page cache, never a second host copy. Pages are read on first touch, so loading a model only
// parses the headers; the executors then touch each tensor once when they build their layers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sharq {

class MappedFile {
 public:
  // Throws CheckpointError naming the path when it is missing, not a regular file or unmappable.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }  // nullptr for an empty file
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sharq
