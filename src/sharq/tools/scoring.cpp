#include "sharq/tools/scoring.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

namespace sharq {

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open the data file", path));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
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
