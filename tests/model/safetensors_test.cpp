// safetensors: the U8 / I8 / F8_E4M3 dtypes of quantized checkpoints are read with the same bounds
// checks as the float ones, and the writer's files (header, __metadata__, 8-byte aligned data,
// tensors back to back, ordered by element size) read back bit for bit, through our parser and
// through an independent byte-level reading of the header.
#include "sharq/model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "sharq/formats/minifloat.h"

namespace {

namespace fs = std::filesystem;
using sharq::CheckpointError;
using sharq::DType;
using sharq::SafetensorsTensorOut;

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() / ("sharq_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str(const std::string& child) const { return (path_ / child).string(); }

 private:
  fs::path path_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<uint8_t> safetensors_bytes(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i)));
  s.insert(s.end(), header.begin(), header.end());
  s.insert(s.end(), data.begin(), data.end());
  return s;
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "'" << (part) << "' not in: " << (msg)

std::string parse_error(const std::vector<uint8_t>& file) {
  try {
    sharq::parse_safetensors(file.data(), file.size(), "q.safetensors");
  } catch (const CheckpointError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no CheckpointError";
  return {};
}

TEST(SafetensorsRead, ByteDtypesAreViewedInPlaceWithTheirValues) {
  // U8 [2, 3], I8 [4], F8_E4M3 [3]: byte views, and to_f32 gives the integer / E4M3 values
  const std::vector<uint8_t> data = {0, 1, 255, 16, 32, 64, /*I8*/ 0x80, 0xFF, 0, 0x7F, /*F8*/ 0x38, 0xB8, 0x7E};
  const std::string header = R"({"u": {"dtype": "U8", "shape": [2, 3], "data_offsets": [0, 6]},
    "i": {"dtype": "I8", "shape": [4], "data_offsets": [6, 10]},
    "f": {"dtype": "F8_E4M3", "shape": [3], "data_offsets": [10, 13]}})";
  const auto file = safetensors_bytes(header, data);
  const auto t = sharq::parse_safetensors(file.data(), file.size(), "q.safetensors");
  const size_t data0 = file.size() - data.size();
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t.at("u").dtype, DType::u8);
  EXPECT_EQ(t.at("u").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.at("u").data, file.data() + data0);
  EXPECT_EQ(t.at("u").bytes, 6u);
  EXPECT_EQ(sharq::to_f32(t.at("u")), (std::vector<float>{0, 1, 255, 16, 32, 64}));
  EXPECT_EQ(t.at("i").dtype, DType::i8);
  EXPECT_EQ(sharq::to_f32(t.at("i")), (std::vector<float>{-128, -1, 0, 127}));
  EXPECT_EQ(t.at("f").dtype, DType::f8_e4m3);
  EXPECT_EQ(sharq::to_f32(t.at("f")), (std::vector<float>{1.0f, -1.0f, 448.0f}));
  EXPECT_STREQ(sharq::to_string(DType::f8_e4m3), "F8_E4M3");
  EXPECT_EQ(sharq::dtype_bytes(DType::u8), 1u);
}

TEST(SafetensorsRead, ByteDtypesAreBoundsCheckedNamingTheTensor) {
  const std::vector<uint8_t> data(12, 0);
  EXPECT_HAS(parse_error(safetensors_bytes(R"({"w": {"dtype": "U8", "shape": [2, 7], "data_offsets": [0, 12]}})", data)),
             "q.safetensors: tensor 'w': shape [2, 7] x U8 needs more than the 12 bytes");
  EXPECT_HAS(parse_error(safetensors_bytes(R"({"w": {"dtype": "F8_E4M3", "shape": [5], "data_offsets": [0, 12]}})", data)),
             "q.safetensors: tensor 'w': shape [5] x F8_E4M3 is 5 bytes but data_offsets [0, 12] span 12");
  EXPECT_HAS(parse_error(safetensors_bytes(R"({"w": {"dtype": "I8", "shape": [13], "data_offsets": [0, 13]}})", data)),
             "q.safetensors: tensor 'w': data_offsets [0, 13] run past the end of the data section (12 bytes; truncated file?)");
  EXPECT_HAS(parse_error(safetensors_bytes(R"({"w": {"dtype": "F8_E5M2", "shape": [12], "data_offsets": [0, 12]}})", data)),
             "tensor 'w' has unsupported dtype 'F8_E5M2'");
}

// The layout rules of the reference library: the tensors index the whole data section with no gap and
// nothing after the last one, no name twice, and __metadata__ a map of strings to strings.
TEST(SafetensorsRead, RefusesGapsTrailingBytesDuplicateNamesAndBadMetadata) {
  const std::vector<uint8_t> data(12, 0);
  const std::string a = R"("a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]})";
  EXPECT_HAS(parse_error(safetensors_bytes("{" + a + R"(, "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}})", data)),
             "q.safetensors: bytes [4, 8) of the data section belong to no tensor (before 'b')");
  EXPECT_HAS(parse_error(safetensors_bytes(R"({"b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})", std::vector<uint8_t>(8, 0))),
             "bytes [0, 4) of the data section belong to no tensor (before 'b')");
  EXPECT_HAS(parse_error(safetensors_bytes("{" + a + "}", data)),
             "q.safetensors: the data section is 12 bytes but its tensors end at byte 4 (8 trailing bytes)");
  EXPECT_HAS(parse_error(safetensors_bytes(R"({})", data)), "the data section is 12 bytes but its tensors end at byte 0");
  EXPECT_HAS(parse_error(safetensors_bytes("{" + a + ", " + a + "}", std::vector<uint8_t>(4, 0))),
             "q.safetensors: header: the key \"a\" appears twice in one object (at the top level)");
  // at any depth: a field of one tensor's entry given twice
  EXPECT_HAS(parse_error(safetensors_bytes(R"({"a": {"dtype": "U8", "shape": [4], "dtype": "F32", "data_offsets": [0, 4]}})",
                                           std::vector<uint8_t>(4, 0))),
             "q.safetensors: header: the key \"dtype\" appears twice in one object (at /a)");
  for (const char* meta : {R"(3)", R"("x")", R"([1])"})
    EXPECT_HAS(parse_error(safetensors_bytes(std::string(R"({"__metadata__": )") + meta + ", " + a + "}", std::vector<uint8_t>(4, 0))),
               "'__metadata__' must be an object of strings");
  EXPECT_HAS(parse_error(safetensors_bytes("{" + a + R"(, "__metadata__": {"format": "pt", "n": {"deep": 1}}})", std::vector<uint8_t>(4, 0))),
             "'__metadata__' entry 'n' must be a string");
  // the same file with its bytes exactly covered reads, metadata and zero-size tensors included
  const auto ok = safetensors_bytes("{" + a + R"(, "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
      "__metadata__": {"format": "pt"}, "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}})", data);
  EXPECT_EQ(sharq::parse_safetensors(ok.data(), ok.size(), "q.safetensors").size(), 3u);
}

TEST(SafetensorsWrite, RoundTripsEveryDtypeBitForBitWithMetadata) {
  TempDir tmp;
  std::mt19937 rng(12);
  auto random_bytes = [&](size_t n) {
    std::vector<uint8_t> b(n);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    return b;
  };
  // odd sizes, so that alignment depends on the ordering the writer chooses
  const auto f32 = random_bytes(4 * 5), f16 = random_bytes(2 * 3), bf16 = random_bytes(2 * 7), u8 = random_bytes(3 * 5),
             i8 = random_bytes(1), f8 = random_bytes(11);
  std::vector<SafetensorsTensorOut> out = {
      {"z.u8", DType::u8, {3, 5}, u8.data(), {}},
      {"a.f8", DType::f8_e4m3, {11}, nullptr, [&](uint8_t* p) { std::memcpy(p, f8.data(), f8.size()); }},
      {"m.f16", DType::f16, {3}, f16.data(), {}},
      {"b.bf16", DType::bf16, {7, 1}, bf16.data(), {}},
      {"y.f32", DType::f32, {5}, nullptr, [&](uint8_t* p) { std::memcpy(p, f32.data(), f32.size()); }},
      {"c.i8", DType::i8, {}, i8.data(), {}},  // a 0-d scalar
      {"e.empty", DType::f32, {0, 4}, nullptr, {}},
  };
  const std::string path = tmp.str("m.safetensors");
  const uint64_t n = sharq::write_safetensors(path, out, {{"format", "pt"}, {"producer", "sharq"}});
  const std::vector<uint8_t> file = read_bytes(path);
  ASSERT_EQ(file.size(), n);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // byte-level: header length, 8-byte aligned data start, JSON with __metadata__, contiguous offsets
  uint64_t hl = 0;
  for (int i = 7; i >= 0; --i) hl = (hl << 8) | file[i];
  EXPECT_EQ((8 + hl) % 8, 0u);
  const auto header = nlohmann::json::parse(file.begin() + 8, file.begin() + 8 + static_cast<long>(hl));
  EXPECT_EQ(header["__metadata__"], (nlohmann::json{{"format", "pt"}, {"producer", "sharq"}}));
  std::vector<std::pair<uint64_t, std::string>> order;
  for (const auto& [k, v] : header.items())
    if (k != "__metadata__") order.push_back({v["data_offsets"][0].get<uint64_t>(), k});
  std::sort(order.begin(), order.end());
  uint64_t expect_begin = 0;
  size_t last_item = 8;
  for (const auto& [begin, name] : order) {
    const auto& v = header[name];
    EXPECT_EQ(begin, expect_begin) << name << ": the format wants the tensors back to back";
    const size_t item = sharq::dtype_bytes([&] {
      for (DType d : {DType::f32, DType::f16, DType::bf16, DType::u8, DType::i8, DType::f8_e4m3})
        if (v["dtype"] == sharq::to_string(d)) return d;
      return DType::f32;
    }());
    EXPECT_EQ((8 + hl + begin) % item, 0u) << name << " is not aligned to its element size";
    EXPECT_LE(item, last_item) << name << ": larger elements come first";
    last_item = item;
    expect_begin = v["data_offsets"][1].get<uint64_t>();
  }
  EXPECT_EQ(8 + hl + expect_begin, file.size());

  // through the parser: every tensor's dtype, shape and bytes
  const auto t = sharq::parse_safetensors(file.data(), file.size(), path);
  ASSERT_EQ(t.size(), out.size());
  auto same = [&](const std::string& name, DType d, std::vector<int64_t> shape, const std::vector<uint8_t>& bytes) {
    const auto& v = t.at(name);
    EXPECT_EQ(v.dtype, d) << name;
    EXPECT_EQ(v.shape, shape) << name;
    ASSERT_EQ(v.bytes, bytes.size()) << name;
    EXPECT_TRUE(bytes.empty() || std::memcmp(v.data, bytes.data(), bytes.size()) == 0) << name;
  };
  same("z.u8", DType::u8, {3, 5}, u8);
  same("a.f8", DType::f8_e4m3, {11}, f8);
  same("m.f16", DType::f16, {3}, f16);
  same("b.bf16", DType::bf16, {7, 1}, bf16);
  same("y.f32", DType::f32, {5}, f32);
  same("c.i8", DType::i8, {}, i8);
  same("e.empty", DType::f32, {0, 4}, {});
  EXPECT_NE(sharq::f32_in_place(t.at("y.f32")), nullptr) << "an F32 tensor written first is 4-byte aligned in a mapped file";
}

TEST(SafetensorsWrite, RefusesBadTensorListsNamingFileAndTensor) {
  TempDir tmp;
  const std::vector<uint8_t> b(8, 0);
  auto error = [&](std::vector<SafetensorsTensorOut> v) {
    try {
      sharq::write_safetensors(tmp.str("bad.safetensors"), v);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "no error";
    return std::string();
  };
  EXPECT_HAS(error({{"w", DType::u8, {8}, b.data(), {}}, {"w", DType::u8, {8}, b.data(), {}}}), "tensor 'w' given twice");
  EXPECT_HAS(error({{"__metadata__", DType::u8, {8}, b.data(), {}}}), "cannot write a tensor named '__metadata__'");
  EXPECT_HAS(error({{"w", DType::u8, {-8}, b.data(), {}}}), "tensor 'w' has a negative dimension -8");
  EXPECT_HAS(error({{"w", DType::u8, {8}, nullptr, {}}}), "tensor 'w' has neither data nor a fill function");
  EXPECT_FALSE(fs::exists(tmp.str("bad.safetensors")));
  try {
    sharq::write_safetensors(tmp.str("no/such/dir/x.safetensors"), {{"w", DType::u8, {8}, b.data(), {}}});
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_HAS(std::string(e.what()), "x.safetensors.tmp: cannot create");
  }
}

}  // namespace
