#include "sharq/model/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <stdexcept>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#include "sharq/model/loader_text.h"

namespace sharq {
namespace {

using nlohmann::json;

using loader_text::describe;

uint64_t le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

constexpr DType kDTypes[] = {DType::f32, DType::f16, DType::bf16, DType::u8, DType::i8, DType::f8_e4m3};

// The dtype of a safetensors spelling; false when it is not one of kDTypes.
bool dtype_named(const std::string& name, DType& out) {
  for (DType d : kDTypes)
    if (name == to_string(d)) {
      out = d;
      return true;
    }
  return false;
}

// A tensor's validated entry: everything needed to view it, checked before any view is made.
struct Entry {
  const std::string* name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
  size_t count;
};

uint64_t offset_value(const json& v, const std::string& file, const std::string& tensor, int which) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    throw CheckpointError(fmt::format("{}: tensor '{}': data_offsets[{}] must be a non-negative integer, got {}", file, tensor, which, describe(v)));
  return v.get<uint64_t>();
}

Entry validate_entry(const std::string& tname, const json& info, const std::string& file, uint64_t data_len) {
  if (!info.is_object())
    throw CheckpointError(fmt::format("{}: tensor '{}': header entry must be an object, got {}", file, tname, describe(info)));
  Entry e{&tname, {}, {}, 0, 0, 0};

  const auto dt = info.find("dtype");
  if (dt == info.end()) throw CheckpointError(fmt::format("{}: tensor '{}': field 'dtype' is missing", file, tname));
  if (!dt->is_string()) throw CheckpointError(fmt::format("{}: tensor '{}': field 'dtype' must be a string, got {}", file, tname, describe(*dt)));
  e.dtype = dt->get<std::string>();
  DType d{};
  if (!dtype_named(e.dtype, d))
    throw CheckpointError(fmt::format("{}: tensor '{}' has unsupported dtype '{}' (supported: F32, F16, BF16, U8, I8, F8_E4M3)", file,
                                      tname, e.dtype));
  const size_t item = dtype_bytes(d);

  // Offsets first: on a truncated file the useful message is that the data runs past the end.
  const auto off = info.find("data_offsets");
  if (off == info.end()) throw CheckpointError(fmt::format("{}: tensor '{}': field 'data_offsets' is missing", file, tname));
  if (!off->is_array() || off->size() != 2)
    throw CheckpointError(fmt::format("{}: tensor '{}': field 'data_offsets' must be a list [begin, end]", file, tname));
  e.begin = offset_value((*off)[0], file, tname, 0);
  e.end = offset_value((*off)[1], file, tname, 1);
  if (e.end < e.begin)
    throw CheckpointError(fmt::format("{}: tensor '{}': data_offsets [{}, {}] end before they begin", file, tname, e.begin, e.end));
  if (e.end > data_len)
    throw CheckpointError(fmt::format("{}: tensor '{}': data_offsets [{}, {}] run past the end of the data section ({} bytes; truncated file?)",
                                      file, tname, e.begin, e.end, data_len));
  const uint64_t span = e.end - e.begin;

  const auto sh = info.find("shape");
  if (sh == info.end()) throw CheckpointError(fmt::format("{}: tensor '{}': field 'shape' is missing", file, tname));
  if (!sh->is_array()) throw CheckpointError(fmt::format("{}: tensor '{}': field 'shape' must be a list, got {}", file, tname, describe(*sh)));
  bool has_zero = false;
  for (const json& d : *sh) {
    if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
      throw CheckpointError(fmt::format("{}: tensor '{}': field 'shape' has a dimension {} that is not a non-negative integer", file, tname, describe(d)));
    const uint64_t v = d.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw CheckpointError(fmt::format("{}: tensor '{}': field 'shape' dimension {} is out of range", file, tname, v));
    e.shape.push_back(static_cast<int64_t>(v));
    if (v == 0) has_zero = true;
  }
  // Element count, overflow-free: the running product never exceeds span / itemsize, which bounds
  // numel by the bytes actually present (an executor sizes its buffers from the shape).
  uint64_t count = has_zero ? 0 : 1;
  for (int64_t d : e.shape) {
    if (has_zero) break;
    if (count > span / item / static_cast<uint64_t>(d))
      throw CheckpointError(fmt::format("{}: tensor '{}': shape {} x {} needs more than the {} bytes data_offsets [{}, {}] span", file, tname,
                                        loader_text::shape(e.shape), e.dtype, span, e.begin, e.end));
    count *= static_cast<uint64_t>(d);
  }
  if (count * item != span)
    throw CheckpointError(fmt::format("{}: tensor '{}': shape {} x {} is {} bytes but data_offsets [{}, {}] span {}", file, tname,
                                      loader_text::shape(e.shape), e.dtype, count * item, e.begin, e.end, span));
  e.count = static_cast<size_t>(count);
  return e;
}

DType dtype_of(const std::string& dtype) {
  DType d = DType::f32;
  dtype_named(dtype, d);  // validate_entry admitted only known names
  return d;
}

}  // namespace

std::map<std::string, TensorView> parse_safetensors(const uint8_t* b, size_t n, const std::string& name) {
  if (n < 8) throw CheckpointError(fmt::format("{}: file is {} bytes, too short for the 8-byte safetensors header length", name, n));
  const uint64_t header_len = le64(b);
  if (header_len > n - 8)
    throw CheckpointError(fmt::format("{}: header length {} runs past the end of the file ({} bytes)", name, header_len, n));
  if (header_len > kSafetensorsMaxHeaderBytes)
    throw CheckpointError(fmt::format("{}: header length {} exceeds the format's limit of {} bytes", name, header_len, kSafetensorsMaxHeaderBytes));

  json header;
  try {  // a key given twice (a tensor name, a field of its entry) would silently keep its last entry
    header = json_checks::parse_unique(std::string_view(reinterpret_cast<const char*>(b + 8), static_cast<size_t>(header_len)));
  } catch (const json::exception& e) {
    throw CheckpointError(fmt::format("{}: header is not valid JSON ({})", name, e.what()));
  } catch (const std::invalid_argument& e) {
    throw CheckpointError(fmt::format("{}: header: {}", name, e.what()));
  }
  if (!header.is_object()) throw CheckpointError(fmt::format("{}: header must be a JSON object, got {}", name, describe(header)));
  if (const auto m = header.find("__metadata__"); m != header.end()) {  // the format's map of strings to strings
    if (!m->is_object()) throw CheckpointError(fmt::format("{}: '__metadata__' must be an object of strings, got {}", name, describe(*m)));
    for (const auto& [k, v] : m->items())
      if (!v.is_string())
        throw CheckpointError(fmt::format("{}: '__metadata__' entry '{}' must be a string, got {}", name, k, describe(v)));
  }

  const uint8_t* data = b + 8 + header_len;
  const uint64_t data_len = n - 8 - header_len;
  std::vector<Entry> entries;
  try {
    for (const auto& [tname, info] : header.items()) {
      if (tname == "__metadata__") continue;  // free-form strings; nothing the loader needs
      entries.push_back(validate_entry(tname, info, name, data_len));
    }
  } catch (const json::exception& e) {
    // every access above is type-checked first; this is the backstop that keeps the error contract
    throw CheckpointError(fmt::format("{}: malformed header ({})", name, e.what()));
  }
  // Overlapping ranges would let a small file expand into many copies of the same bytes.
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* x, const Entry* y) { return x->begin < y->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw CheckpointError(fmt::format("{}: tensors '{}' and '{}' overlap in the data section", name, *by_offset[i - 1]->name, *by_offset[i]->name));
  }
  // The format indexes the whole data section, with no hole (as the reference library checks): bytes
  // that no tensor owns mean offsets that were not meant, or a file that is not what it says.
  uint64_t covered = 0;
  for (const Entry* e : by_offset) {
    if (e->begin != covered)
      throw CheckpointError(fmt::format("{}: bytes [{}, {}) of the data section belong to no tensor (before '{}'); the format has no gaps",
                                        name, covered, e->begin, *e->name));
    covered = e->end;
  }
  if (covered != data_len)
    throw CheckpointError(fmt::format("{}: the data section is {} bytes but its tensors end at byte {} ({} trailing bytes)", name,
                                      data_len, covered, data_len - covered));

  std::map<std::string, TensorView> out;
  for (const Entry& e : entries) {
    TensorView t;
    t.name = *e.name;
    t.dtype = dtype_of(e.dtype);
    t.shape = e.shape;
    t.data = data + e.begin;
    t.bytes = static_cast<size_t>(e.end - e.begin);
    out.emplace(*e.name, std::move(t));
  }
  return out;
}

SafetensorsFile open_safetensors(const std::string& path) {
  SafetensorsFile f;
  f.file = std::make_shared<const MappedFile>(path);
  f.tensors = parse_safetensors(f.file->data(), f.file->size(), path);
  return f;
}

// ---- writer -------------------------------------------------------------------------------------

namespace {

// A FILE* that is closed on every path out.
struct OutFile {
  std::FILE* f = nullptr;
  ~OutFile() {
    if (f) std::fclose(f);
  }
};

[[noreturn]] void write_error(const std::string& path, const std::string& what, int err) {
  throw std::runtime_error(fmt::format("{}: {} ({})", path, what, std::generic_category().message(err)));
}

}  // namespace

uint64_t write_safetensors(const std::string& path, const std::vector<SafetensorsTensorOut>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  // validate, size and order the tensors
  struct Item {
    const SafetensorsTensorOut* t;
    uint64_t bytes;
  };
  std::vector<Item> items;
  std::set<std::string> names;
  for (const SafetensorsTensorOut& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      throw std::runtime_error(fmt::format("{}: cannot write a tensor named '{}'", path, t.name));
    if (!names.insert(t.name).second) throw std::runtime_error(fmt::format("{}: tensor '{}' given twice", path, t.name));
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw std::runtime_error(fmt::format("{}: tensor '{}' has a negative dimension {}", path, t.name, d));
      n *= static_cast<uint64_t>(d);
    }
    if (!t.data && !t.fill && n != 0)
      throw std::runtime_error(fmt::format("{}: tensor '{}' has neither data nor a fill function", path, t.name));
    items.push_back({&t, n * dtype_bytes(t.dtype)});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    const size_t ia = dtype_bytes(a.t->dtype), ib = dtype_bytes(b.t->dtype);
    return ia != ib ? ia > ib : a.t->name < b.t->name;
  });

  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Item& it : items) {
    header[it.t->name] = {{"dtype", to_string(it.t->dtype)}, {"shape", it.t->shape}, {"data_offsets", {offset, offset + it.bytes}}};
    offset += it.bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text += ' ';  // the data section starts 8-byte aligned

  const std::string tmp = path + ".tmp";
  uint64_t written = 0;
  {
    OutFile out;
    out.f = std::fopen(tmp.c_str(), "wb");
    if (!out.f) write_error(tmp, "cannot create", errno);
    auto put = [&](const void* p, size_t n, const std::string& what) {
      if (n != 0 && std::fwrite(p, 1, n, out.f) != n) write_error(tmp, "write failed at " + what, errno);
      written += n;
    };
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
    put(len, 8, "the header length");
    put(text.data(), text.size(), "the header");
    std::vector<uint8_t> buf;
    for (const Item& it : items) {
      const std::string what = fmt::format("tensor '{}'", it.t->name);
      if (it.t->data) {
        put(it.t->data, static_cast<size_t>(it.bytes), what);
      } else if (it.bytes != 0) {
        buf.assign(static_cast<size_t>(it.bytes), 0);
        it.t->fill(buf.data());
        put(buf.data(), buf.size(), what);
        std::vector<uint8_t>().swap(buf);  // one tensor's buffer at a time
      }
    }
    if (std::fflush(out.f) != 0) write_error(tmp, "write failed", errno);
    const int rc = std::fclose(out.f);
    out.f = nullptr;
    if (rc != 0) write_error(tmp, "close failed", errno);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw std::runtime_error(fmt::format("{}: cannot rename {} to it ({})", path, tmp, ec.message()));
  return written;
}

}  // namespace sharq
