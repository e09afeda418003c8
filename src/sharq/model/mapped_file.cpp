#include "sharq/model/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "sharq/model/checkpoint_error.h"

namespace sharq {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw CheckpointError(fmt::format("{}: no such file", path));
  if (!fs::is_regular_file(st)) throw CheckpointError(fmt::format("{}: not a regular file", path));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError(fmt::format("{}: cannot open ({})", path, std::strerror(errno)));
  struct stat sb {};
  if (::fstat(fd, &sb) != 0) {
    const int err = errno;
    ::close(fd);
    throw CheckpointError(fmt::format("{}: cannot get the file size ({})", path, std::strerror(err)));
  }
  size_ = static_cast<size_t>(sb.st_size);
  if (size_ > 0) {  // mmap refuses a zero length; an empty file is simply no bytes
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw CheckpointError(fmt::format("{}: cannot map {} bytes ({})", path, size_, std::strerror(err)));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file referenced
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace sharq
