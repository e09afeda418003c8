// A scratch directory for one test, removed at the end: under the system temp directory, named
// by a prefix, the test's name and gtest's random seed (so parallel test processes do not collide).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace sharq_test {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix) {
    const auto* ut = ::testing::UnitTest::GetInstance();
    path = std::filesystem::temp_directory_path() /
           (prefix + "_" + std::to_string(ut->random_seed()) + "_" + ut->current_test_info()->name());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // Writes `content` to path / name; returns that file's path.
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream(path / name, std::ios::binary) << content;
    return (path / name).string();
  }
  std::string str() const { return path.string(); }
};

}  // namespace sharq_test
