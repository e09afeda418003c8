#include "sharq/tools/scoring.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "sharq/core/utf8.h"

namespace sharq {

std::string read_text_file(const std::string& path, uintmax_t max_bytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw std::runtime_error(fmt::format("{}: the data file does not exist", path));
  if (!fs::is_regular_file(st))
    throw std::runtime_error(fmt::format("{}: the data file is not a regular file (a device, FIFO or directory is refused)", path));
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw std::runtime_error(fmt::format("{}: cannot get the data file's size ({})", path, ec.message()));
  if (size == 0) throw std::runtime_error(fmt::format("{}: the data file is empty", path));
  if (size > max_bytes)
    throw std::runtime_error(fmt::format("{}: the data file has {} bytes, more than the limit of {}", path, size, max_bytes));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open the data file", path));
  std::string text(static_cast<size_t>(size), '\0');
  f.read(text.data(), static_cast<std::streamsize>(size));
  if (f.bad() || static_cast<uintmax_t>(f.gcount()) != size)
    throw std::runtime_error(fmt::format("{}: read {} of {} bytes of the data file (changed or unreadable)", path, f.gcount(), size));
  // a binary or mis-encoded file would be scored as text (byte tokens) without a word: a perplexity
  // of a billion from random bytes is a plausible wrong number
  if (const size_t bad = first_invalid_utf8(text); bad != std::string::npos)
    throw std::runtime_error(fmt::format("{}: the data file is not valid UTF-8 text (byte {}); convert it, e.g. "
                                         "`iconv -f latin1 -t utf-8`", path, bad));
  return text;
}

void log_softmax(const float* logits, int64_t V, std::vector<double>& out) {
  out.resize(static_cast<size_t>(V));
  double mx = logits[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(logits[i] - mx);
  const double lse = mx + std::log(sum);
  for (int64_t i = 0; i < V; ++i) out[i] = logits[i] - lse;
}

int64_t argmax(const float* v, int64_t n) {
  int64_t b = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[i] > v[b]) b = i;
  return b;
}

}  // namespace sharq
