// Error measures shared by the tests that compare two computations with a stated tolerance.
#pragma once

#include <cmath>
#include <vector>

namespace sharq_test {

// ||a - b|| / ||b|| (Frobenius), in double.
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace sharq_test
