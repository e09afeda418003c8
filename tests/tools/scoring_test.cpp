// read_text_file: the whole file, NUL bytes included; devices, FIFOs, directories, empty and
// oversized files are refused with a message naming the path (ppl and analyze read --data here).
#include "sharq/tools/scoring.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "'" << (part) << "' not in: " << (msg)

class ReadTextFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sharq_scoring_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream(dir_ / name, std::ios::binary) << bytes;
    return (dir_ / name).string();
  }
  fs::path dir_;
};

TEST_F(ReadTextFile, ReturnsEveryByteIncludingNuls) {
  const std::string text = std::string("first\0second\n", 13) + std::string(100000, 'x') + std::string(1, '\0');
  EXPECT_EQ(sharq::read_text_file(write("t.txt", text)), text);
}

// Text, not bytes: an ill-formed UTF-8 sequence is an error naming the file and the byte (NUL is
// valid UTF-8 and stays allowed, above).
TEST_F(ReadTextFile, IllFormedUtf8IsRefusedWithItsOffset) {
  const std::string latin1 = std::string("caf") + static_cast<char>(0xE9) + " au lait\n";
  const std::string path = write("latin1.txt", latin1);
  EXPECT_HAS(error_of([&] { sharq::read_text_file(path); }), path + ": the data file is not valid UTF-8 text (byte 3)");
  const std::string cut = std::string("ok ") + static_cast<char>(0xE2) + static_cast<char>(0x82);  // a 3-byte sequence cut short
  EXPECT_HAS(error_of([&] { sharq::read_text_file(write("cut.txt", cut)); }), "not valid UTF-8 text (byte 3)");
  EXPECT_EQ(sharq::read_text_file(write("utf8.txt", "caf\xC3\xA9 \xE2\x82\xAC\n")), "caf\xC3\xA9 \xE2\x82\xAC\n");
}

TEST_F(ReadTextFile, DevicesFifosAndDirectoriesAreRefused) {
  for (const char* dev : {"/dev/zero", "/dev/null"}) {
    if (!fs::exists(dev)) continue;
    const std::string msg = error_of([&] { sharq::read_text_file(dev); });
    EXPECT_HAS(msg, std::string(dev) + ": the data file is not a regular file");
  }
  const std::string fifo = (dir_ / "data.fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_HAS(error_of([&] { sharq::read_text_file(fifo); }), fifo + ": the data file is not a regular file");  // no open, no hang
  EXPECT_HAS(error_of([&] { sharq::read_text_file(dir_.string()); }), dir_.string() + ": the data file is not a regular file");
}

TEST_F(ReadTextFile, MissingEmptyAndOversizedFilesAreNamed) {
  const std::string missing = (dir_ / "nope.txt").string();
  EXPECT_HAS(error_of([&] { sharq::read_text_file(missing); }), missing + ": the data file does not exist");
  const std::string empty = write("empty.txt", "");
  EXPECT_HAS(error_of([&] { sharq::read_text_file(empty); }), empty + ": the data file is empty");
  const std::string big = write("big.txt", std::string(1001, 'a'));
  EXPECT_HAS(error_of([&] { sharq::read_text_file(big, 1000); }), big + ": the data file has 1001 bytes, more than the limit of 1000");
  EXPECT_EQ(sharq::read_text_file(big, 1001).size(), 1001u);
  EXPECT_EQ(sharq::kMaxTextFileBytes, uintmax_t{1} << 30);
}

}  // namespace
