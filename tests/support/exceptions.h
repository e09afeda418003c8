// The message of the std::invalid_argument a call throws, for tests that check what an error names.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>

namespace sharq_test {

// e.what() of the std::invalid_argument thrown by f; "<wrong exception type>" for any other
// exception, "<no exception>" when f returns.
inline std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (...) {
    return "<wrong exception type>";
  }
  return "<no exception>";
}

}  // namespace sharq_test
