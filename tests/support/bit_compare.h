// Bit-exact float comparisons shared by the unit tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace sharq_test {

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

// Bit-exact equality; any two NaNs compare equal (a NaN's payload is not part of the contract).
inline bool same_bits(float a, float b) { return float_bits(a) == float_bits(b) || (std::isnan(a) && std::isnan(b)); }

inline std::string hex(double v) {
  std::ostringstream os;
  os << std::hexfloat << v << " (" << std::defaultfloat << v << ")";
  return os.str();
}

// Element-wise same_bits; the first mismatch is reported as (row, col) when cols > 0.
inline ::testing::AssertionResult bit_equal(const std::vector<float>& a, const std::vector<float>& b, int64_t cols = 0) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    if (same_bits(a[i], b[i])) continue;
    auto f = ::testing::AssertionFailure() << "first mismatch at ";
    if (cols > 0) f << "(" << i / cols << ", " << i % cols << ")";
    else f << i;
    return f << ": " << hex(a[i]) << " vs " << hex(b[i]);
  }
  return ::testing::AssertionSuccess();
}

}  // namespace sharq_test
