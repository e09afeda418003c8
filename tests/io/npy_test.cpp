// .npy reader/writer: round trips, the three input dtypes, and every malformed-file path naming
// the file and the field.
#include "sharq/io/npy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "sharq/formats/minifloat.h"

namespace {

using sharq::NpyError;
using sharq::parse_npy;

// Handcrafted .npy bytes (version 1 or 2) around a header dict and raw data.
std::vector<uint8_t> make_npy(const std::string& dict, const std::vector<uint8_t>& data, int major = 1) {
  std::string header = dict;
  const size_t pre = major == 1 ? 10 : 12;
  header.append((64 - (pre + header.size() + 1) % 64) % 64, ' ');
  header.push_back('\n');
  std::vector<uint8_t> b = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(major), 0};
  const uint32_t n = static_cast<uint32_t>(header.size());
  b.push_back(n & 0xFF);
  b.push_back((n >> 8) & 0xFF);
  if (major != 1) { b.push_back((n >> 16) & 0xFF); b.push_back(n >> 24); }
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

template <class T>
std::vector<uint8_t> raw(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::string expect_error(const std::vector<uint8_t>& bytes) {
  try {
    parse_npy(bytes.data(), bytes.size(), "bad.npy");
  } catch (const NpyError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no NpyError thrown";
  return {};
}

TEST(Npy, WriteReadRoundTripIsBitExact) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.0f, 100.0f);
  const auto dir = std::filesystem::temp_directory_path() / "sharq_npy_test";
  std::filesystem::create_directories(dir);
  for (const std::vector<int64_t>& shape : std::vector<std::vector<int64_t>>{{3, 5}, {7}, {2, 3, 4}, {0, 9}, {1, 1}}) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = nd(rng);
    if (n > 2) { v[0] = -0.0f; v[1] = std::numeric_limits<float>::infinity(); }
    const std::string path = (dir / "a.npy").string();
    sharq::write_npy(path, v.data(), shape);
    const sharq::NpyArray a = sharq::read_npy(path);
    EXPECT_EQ(a.shape, shape);
    EXPECT_EQ(a.source_dtype, "float32");
    ASSERT_EQ(a.data.size(), v.size());
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(sharq::f32_bits(a.data[i]), sharq::f32_bits(v[i]));
    // header is padded so the data starts at a multiple of 64
    EXPECT_EQ((std::filesystem::file_size(path) - v.size() * 4) % 64, 0u);
  }
}

TEST(Npy, ReadsFloat16AndBfloat16AndFloat64) {
  std::mt19937_64 rng(8);
  std::vector<uint16_t> h(12);
  for (auto& x : h) x = static_cast<uint16_t>(rng() & 0xFBFF);  // finite halves of both signs
  auto b = make_npy("{'descr': '<f2', 'fortran_order': False, 'shape': (3, 4), }", raw(h));
  auto a = parse_npy(b.data(), b.size(), "h.npy");
  EXPECT_EQ(a.source_dtype, "float16");
  ASSERT_EQ(a.data.size(), 12u);
  for (size_t i = 0; i < h.size(); ++i) EXPECT_EQ(a.data[i], sharq::fp16_decode(h[i])) << i;

  for (const char* descr : {"<V2", "|V2", "bfloat16"}) {
    b = make_npy(std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (12,), }", raw(h));
    a = parse_npy(b.data(), b.size(), "b.npy");
    EXPECT_EQ(a.source_dtype, "bfloat16");
    for (size_t i = 0; i < h.size(); ++i) EXPECT_EQ(sharq::f32_bits(a.data[i]), static_cast<uint32_t>(h[i]) << 16);
  }

  std::vector<double> d = {1.0, -2.5, 1e-3, 3e38};
  b = make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", raw(d), 2);  // version 2 header
  a = parse_npy(b.data(), b.size(), "d.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 2}));
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(a.data[i], static_cast<float>(d[i]));
}

TEST(Npy, MalformedFilesNameTheFileAndField) {
  const std::vector<uint8_t> four_floats = raw(std::vector<float>{1, 2, 3, 4});
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";

  auto bad_magic = make_npy(ok, four_floats);
  bad_magic[1] = 'X';
  EXPECT_NE(expect_error(bad_magic).find("bad.npy: not a .npy file"), std::string::npos);

  EXPECT_NE(expect_error({0x93, 'N', 'U'}).find("bad magic"), std::string::npos);

  auto past_end = make_npy(ok, four_floats);
  past_end[8] = 0xFF;
  past_end[9] = 0x7F;  // header length 32767 > file
  EXPECT_NE(expect_error(past_end).find("header length"), std::string::npos);

  auto bad_version = make_npy(ok, four_floats);
  bad_version[6] = 9;
  EXPECT_NE(expect_error(bad_version).find("version 9"), std::string::npos);

  EXPECT_NE(expect_error(make_npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", four_floats)).find("'>f4'"),
            std::string::npos);
  EXPECT_NE(expect_error(make_npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }", four_floats)).find("dtype"),
            std::string::npos);
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", four_floats)).find("fortran_order"),
            std::string::npos);
  EXPECT_NE(expect_error(make_npy("{'fortran_order': False, 'shape': (2, 2), }", four_floats)).find("'descr'"), std::string::npos);
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, }", four_floats)).find("'shape'"), std::string::npos);
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", four_floats)).find("shape"),
            std::string::npos);
  // data shorter / longer than the shape says
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", four_floats)).find("bad.npy"),
            std::string::npos);
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", four_floats)).find("needs 12"),
            std::string::npos);
  // a shape whose element count overflows 64 bits must not wrap around to a small number
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
                                  four_floats))
                .find("bad.npy"),
            std::string::npos);
  // truncated files of every length give an error, never a crash
  const auto full = make_npy(ok, four_floats);
  for (size_t n = 0; n < full.size(); ++n) {
    bool threw = false;
    try {
      parse_npy(full.data(), n, "t.npy");
    } catch (const NpyError&) {
      threw = true;
    }
    EXPECT_TRUE(threw) << "length " << n;
  }
}

// Zero-sized dimensions are valid wherever they are (numpy's rule): (4, 0) as much as (0, 64).
TEST(Npy, ZeroSizedDimensionsAreAcceptedAnywhere) {
  for (const char* shape : {"(4, 0)", "(0, 64)", "(0,)", "(3, 0, 5)"}) {
    const auto b = make_npy(std::string("{'descr': '<f4', 'fortran_order': False, 'shape': ") + shape + ", }", {});
    const sharq::NpyArray a = parse_npy(b.data(), b.size(), "z.npy");
    EXPECT_EQ(a.size(), 0) << shape;
    EXPECT_TRUE(a.data.empty()) << shape;
  }
  const auto b = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 0), }", {});
  EXPECT_EQ(parse_npy(b.data(), b.size(), "z.npy").shape, (std::vector<int64_t>{4, 0}));
  // ... but not with data behind them
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 0), }", raw(std::vector<float>{1})))
                .find("needs 0"),
            std::string::npos);
  // a 0-d array (shape ()) is one element
  const auto s = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", raw(std::vector<float>{2.5f}));
  EXPECT_EQ(parse_npy(s.data(), s.size(), "s.npy").data, std::vector<float>{2.5f});
}

// The header is parsed as the dict literal it is: key order, quotes, spacing and a missing
// trailing comma do not matter; 'descr' inside another value is not the key; the last duplicate wins.
TEST(Npy, HeaderIsParsedAsAPythonLiteral) {
  const auto four = raw(std::vector<float>{1, 2, 3, 4});
  for (const char* dict : {"{'shape': (2, 2), 'fortran_order': False, 'descr': '<f4'}",
                           "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,2)}",
                           "{ 'descr' : '<f4' ,\t'fortran_order' : False , 'shape' : ( 2 , 2 , ) , }",
                           "{'descr': '<f2', 'fortran_order': True, 'shape': (9,), 'descr': '<f4', 'fortran_order': False, "
                           "'shape': (2, 2)}"}) {
    const auto b = make_npy(dict, four);
    const sharq::NpyArray a = parse_npy(b.data(), b.size(), "lit.npy");
    EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 2})) << dict;
    EXPECT_EQ(a.source_dtype, "float32") << dict;
    EXPECT_EQ(a.data, (std::vector<float>{1, 2, 3, 4})) << dict;
  }
  // the text 'descr' inside another key's value is not the descr field
  EXPECT_NE(expect_error(make_npy("{'shape': (2, 2), 'x': 'descr': '<f2', 'fortran_order': False}", four)).find("bad.npy"),
            std::string::npos);
  const auto quoted = make_npy("{'fortran_order': False, 'shape': (2, 2), 'descr': '<f4'}", four);
  EXPECT_NO_THROW(parse_npy(quoted.data(), quoted.size(), "q.npy"));
  EXPECT_NE(expect_error(make_npy("{'fortran_order': False, 'shape': (2, 2), 'note': \"'descr': '<f4'\"}", four))
                .find("no 'descr' field"),
            std::string::npos);
  // a key numpy never writes is parsed and ignored; 'descr' inside its value changes nothing
  const auto noted = make_npy("{'note': \"'descr': '<f8', 'shape': (9,)\", 'descr': '<f4', 'fortran_order': False, "
                              "'shape': (2, 2)}", four);
  EXPECT_EQ(parse_npy(noted.data(), noted.size(), "n.npy").shape, (std::vector<int64_t>{2, 2}));
  // a duplicate key: the last value is the one used (here a bad one)
  EXPECT_NE(expect_error(make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'descr': '<i8'}", four))
                .find("field 'descr': unsupported dtype '<i8'"),
            std::string::npos);
}

TEST(Npy, MalformedHeaderLiteralsNameTheFileAndField) {
  const auto four = raw(std::vector<float>{1, 2, 3, 4});
  struct Case { const char* dict; const char* want; };
  for (const Case& c : std::vector<Case>{
           {"'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}", "must start with '{'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)", "closing '}'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)} x", "after the closing"},
           {"{'descr': '<f4' 'fortran_order': False, 'shape': (2, 2)}", "field 'descr': expected ','"},
           {"{'descr' '<f4', 'fortran_order': False, 'shape': (2, 2)}", "expected ':' after the key 'descr'"},
           {"{descr: '<f4', 'fortran_order': False, 'shape': (2, 2)}", "expected a quoted key"},
           {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 2)}", "bad.npy"},
           {"{'descr': <f4, 'fortran_order': False, 'shape': (2, 2)}", "field 'descr'"},
           {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 2)}", "field 'fortran_order'"},
           {"{'descr': '<f4', 'fortran_order': 'False', 'shape': (2, 2)}", "'fortran_order': 'False' is not True or False"},
           {"{'descr': '<f4', 'fortran_order': false, 'shape': (2, 2)}", "unsupported value 'false'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 2]}", "field 'shape'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (4)}", "not a tuple"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -2)}", "negative dimension"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 2)}", "expected ',' or ')'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2.0)}", "field 'shape'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,, 2)}", "field 'shape'"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': '(2, 2)'}", "'shape': '(2, 2)' is not a tuple of integers"},
           {"{'descr': ('<f4',), 'fortran_order': False, 'shape': (2, 2)}", "field 'descr'"},
           {"{'descr': True, 'fortran_order': False, 'shape': (2, 2)}", "'descr': True is not a string"},
           {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 2)}", "structured"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 2)}", "overflows"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2),, }", "expected a quoted key"},
           {"{}", "no 'descr' field"},
           {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2", "field 'shape': the header ends before the closing"},
       }) {
    const std::string e = expect_error(make_npy(c.dict, four));
    EXPECT_NE(e.find("bad.npy"), std::string::npos) << c.dict << " -> " << e;
    EXPECT_NE(e.find(c.want), std::string::npos) << c.dict << " -> " << e;
  }
}

TEST(Npy, ADirectoryIsNamedAsSuch) {
  const auto dir = std::filesystem::temp_directory_path() / "sharq_npy_test_dir.npy";
  std::filesystem::create_directories(dir);
  try {
    sharq::read_npy(dir.string());
    FAIL() << "no error";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.string() + ": is a directory"), std::string::npos) << e.what();
  }
}

TEST(Npy, MissingFileIsAnError) {
  try {
    sharq::read_npy("/nonexistent/dir/x.npy");
    FAIL() << "no error";
  } catch (const NpyError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/x.npy"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos) << e.what();
  }
}

}  // namespace
