#include "sharq/io/npy.h"

#include <cstring>
#include <fstream>
#include <limits>

#include <fmt/format.h>

#include "sharq/formats/minifloat.h"

namespace sharq {
namespace {

// Value of `key` in the header dict: the text after "'key':" up to the matching delimiter.
std::string dict_value(const std::string& header, const std::string& key, const std::string& name) {
  const std::string pat = "'" + key + "'";
  const size_t p = header.find(pat);
  if (p == std::string::npos) throw NpyError(fmt::format("{}: npy header has no '{}' field", name, key));
  size_t q = header.find(':', p + pat.size());
  if (q == std::string::npos) throw NpyError(fmt::format("{}: npy header field '{}' has no value", name, key));
  ++q;
  while (q < header.size() && header[q] == ' ') ++q;
  if (q >= header.size()) throw NpyError(fmt::format("{}: npy header field '{}' is truncated", name, key));
  const char open = header[q];
  if (open == '\'' || open == '"') {
    const size_t e = header.find(open, q + 1);
    if (e == std::string::npos) throw NpyError(fmt::format("{}: npy header field '{}' is unterminated", name, key));
    return header.substr(q + 1, e - q - 1);
  }
  if (open == '(') {
    const size_t e = header.find(')', q);
    if (e == std::string::npos) throw NpyError(fmt::format("{}: npy header field '{}' is unterminated", name, key));
    return header.substr(q, e - q + 1);
  }
  const size_t e = header.find_first_of(",}", q);
  return header.substr(q, e == std::string::npos ? std::string::npos : e - q);
}

std::vector<int64_t> parse_shape(const std::string& tuple, const std::string& name) {
  std::vector<int64_t> shape;
  size_t i = 1;  // after '('
  while (i < tuple.size()) {
    while (i < tuple.size() && (tuple[i] == ' ' || tuple[i] == ',')) ++i;
    if (i >= tuple.size() || tuple[i] == ')') break;
    if (tuple[i] < '0' || tuple[i] > '9') throw NpyError(fmt::format("{}: npy 'shape' {} is not a tuple of integers", name, tuple));
    int64_t v = 0;
    while (i < tuple.size() && tuple[i] >= '0' && tuple[i] <= '9') {
      if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) throw NpyError(fmt::format("{}: npy 'shape' dimension overflows", name));
      v = v * 10 + (tuple[i++] - '0');
    }
    shape.push_back(v);
    if (shape.size() > 32) throw NpyError(fmt::format("{}: npy 'shape' has more than 32 dimensions", name));
  }
  return shape;
}

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24); }

}  // namespace

int64_t NpyArray::size() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

NpyArray parse_npy(const uint8_t* b, size_t n, const std::string& name) {
  static const uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (n < 10 || std::memcmp(b, kMagic, 6) != 0) throw NpyError(fmt::format("{}: not a .npy file (bad magic)", name));
  const int major = b[6];
  size_t hlen, off;
  if (major == 1) {
    hlen = le16(b + 8);
    off = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) throw NpyError(fmt::format("{}: truncated npy preamble", name));
    hlen = le32(b + 8);
    off = 12;
  } else {
    throw NpyError(fmt::format("{}: unsupported npy format version {}.{}", name, major, b[7]));
  }
  if (hlen > n - off) throw NpyError(fmt::format("{}: npy header length {} runs past the end of the file ({} bytes)", name, hlen, n));
  const std::string header(reinterpret_cast<const char*>(b + off), hlen);
  const size_t data_off = off + hlen;

  const std::string descr = dict_value(header, "descr", name);
  const std::string fortran = dict_value(header, "fortran_order", name);
  if (fortran.find("True") != std::string::npos)
    throw NpyError(fmt::format("{}: fortran_order arrays are not supported (save with np.ascontiguousarray)", name));
  NpyArray a;
  a.shape = parse_shape(dict_value(header, "shape", name), name);

  size_t item;
  if (descr == "<f4" || descr == "=f4") { item = 4; a.source_dtype = "float32"; }
  else if (descr == "<f2" || descr == "=f2") { item = 2; a.source_dtype = "float16"; }
  else if (descr == "<f8" || descr == "=f8") { item = 8; a.source_dtype = "float64"; }
  else if (descr == "bfloat16" || descr == "<V2" || descr == "|V2") { item = 2; a.source_dtype = "bfloat16"; }
  else throw NpyError(fmt::format("{}: unsupported npy dtype '{}' (expected float32, float16, float64 or bfloat16, little-endian)", name, descr));

  // element count with overflow checks, bounded by the bytes actually present
  const size_t avail = n - data_off;
  size_t count = 1;
  for (int64_t d : a.shape) {
    if (d != 0 && count > avail / static_cast<size_t>(d)) {
      throw NpyError(fmt::format("{}: npy shape needs more data than the file holds ({} bytes after the header)", name, avail));
    }
    count *= static_cast<size_t>(d);
  }
  if (count > avail / item || count * item != avail)
    throw NpyError(fmt::format("{}: npy data is {} bytes, shape x dtype needs {}", name, avail, count * item));

  a.data.resize(count);
  const uint8_t* p = b + data_off;
  for (size_t i = 0; i < count; ++i) {
    switch (item) {
      case 4: a.data[i] = f32_from_bits(le32(p + 4 * i)); break;
      case 2: {
        const uint16_t h = le16(p + 2 * i);
        a.data[i] = a.source_dtype == "float16" ? fp16_decode(h) : bf16_decode(h);
        break;
      }
      case 8: {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        a.data[i] = static_cast<float>(d);
        break;
      }
    }
  }
  return a;
}

NpyArray read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw NpyError(fmt::format("{}: cannot open", path));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return parse_npy(bytes.data(), bytes.size(), path);
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dims += fmt::format("{}{}", i ? ", " : "", shape[i]);
    count *= shape[i];
  }
  if (shape.size() == 1) dims += ",";  // Python's 1-tuple
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  // pad with spaces so that magic + len + header (ending in '\n') is a multiple of 64
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  if (!f) throw NpyError(fmt::format("{}: cannot create", path));
  const uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<uint8_t>(header.size() & 0xFF),
                           static_cast<uint8_t>(header.size() >> 8)};
  f.write(reinterpret_cast<const char*>(pre), 10);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t u = f32_bits(data[i]);
    const char le[4] = {static_cast<char>(u), static_cast<char>(u >> 8), static_cast<char>(u >> 16), static_cast<char>(u >> 24)};
    f.write(le, 4);
  }
  if (!f) throw NpyError(fmt::format("{}: write failed", path));
}

}  // namespace sharq
