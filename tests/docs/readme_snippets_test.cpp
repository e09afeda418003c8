// The README's library snippets are the programs the tests run: the C++ one is
// tests/consumer/consumer.cpp (built and run against an installed prefix by
// scripts/consumer_test.sh), the Python one is docs/python.md's quick example (run by the pytest
// suite). This test fails when the README drifts from either.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace {

std::string read_file(const std::string& rel) {
  std::ifstream f(std::string(SHARQ_SOURCE_DIR) + "/" + rel, std::ios::binary);
  EXPECT_TRUE(f.good()) << rel;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The body of the first fenced block ```lang ... ``` in text (empty if none).
std::string first_block(const std::string& text, const std::string& lang) {
  const std::string open = "```" + lang + "\n";
  const size_t a = text.find(open);
  if (a == std::string::npos) return {};
  const size_t b = text.find("```", a + open.size());
  return b == std::string::npos ? std::string{} : text.substr(a + open.size(), b - a - open.size());
}

TEST(ReadmeSnippets, CppSnippetIsTheInstalledConsumer) {
  const std::string consumer = read_file("tests/consumer/consumer.cpp");
  ASSERT_FALSE(consumer.empty());
  EXPECT_EQ(first_block(read_file("README.md"), "cpp"), consumer);
}

TEST(ReadmeSnippets, PythonSnippetIsTheTestedQuickExample) {
  const std::string doc = first_block(read_file("docs/python.md"), "python");
  ASSERT_FALSE(doc.empty()) << "docs/python.md has no ```python block";
  EXPECT_EQ(first_block(read_file("README.md"), "python"), doc);
}

}  // namespace
