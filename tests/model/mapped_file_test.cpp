// MappedFile: a read-only mapping of the whole file, empty files map to no bytes, and errors name
// the path.
#include "sharq/model/mapped_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "sharq/model/checkpoint_error.h"

namespace {

namespace fs = std::filesystem;

TEST(MappedFile, MapsTheWholeFileAndEmptyFilesToNoBytes) {
  const fs::path dir = fs::temp_directory_path() / ("sharq_mapped_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "f.bin").string(), empty = (dir / "e.bin").string();
  { std::ofstream(path, std::ios::binary) << "hello, mapping"; }
  { std::ofstream(empty, std::ios::binary); }
  {
    const sharq::MappedFile f(path);
    ASSERT_EQ(f.size(), 14u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.data()), f.size()), "hello, mapping");
    EXPECT_EQ(f.path(), path);
    const sharq::MappedFile e(empty);
    EXPECT_EQ(e.size(), 0u);
    EXPECT_EQ(e.data(), nullptr);
  }
  auto message = [](const std::string& p) {
    try {
      sharq::MappedFile m(p);
    } catch (const sharq::CheckpointError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message((dir / "missing.bin").string()), (dir / "missing.bin").string() + ": no such file");
  EXPECT_EQ(message(dir.string()), dir.string() + ": not a regular file");
  fs::remove_all(dir);
}

}  // namespace
