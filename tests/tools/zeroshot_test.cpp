// The zero-shot harness on a real model (stories260K) with hand-written items whose answer the
// model cannot miss, in every file format; and its bad-input errors.
#include "sharq/tools/zeroshot.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace {

using namespace sharq;

std::string shared_path(const std::string& rel) { return std::string(SHARQ_SOURCE_DIR) + "/../shared/" + rel; }

struct TaskDir {  // one folder per test: ctest -j runs the tests of this file in parallel processes
  std::filesystem::path dir;
  explicit TaskDir(const std::string& name) : dir(std::filesystem::temp_directory_path() / ("sharq_zeroshot_" + name)) {
    std::filesystem::create_directories(dir);
  }
  void write(const std::string& task, const std::string& jsonl) const { std::ofstream(dir / (task + ".jsonl")) << jsonl; }
};

EvalOptions options_for(const TaskDir& d, const std::string& tasks) {
  EvalOptions o;
  o.model_path = shared_path("models/stories260K/stories260K.bin");
  o.tokenizer_path = shared_path("models/stories260K/tok512.bin");
  o.data_dir = d.dir.string();
  o.tasks = tasks;
  o.schemes = "fp32,sharq";
  o.progress = false;
  return o;
}

TEST(Zeroshot, ObviousItemsAreAnsweredInEveryFormat) {
  if (!std::filesystem::exists(shared_path("models/stories260K/stories260K.bin"))) GTEST_SKIP() << "shared data not found";
  TaskDir d("obvious");
  // gold is the fluent TinyStories continuation; the distractor is noise. Gold at index 1 and 0.
  d.write("copa", R"({"query": "Once upon a", "choices": ["qzx vvk plm", "time, there was a little girl."], "gold": 1})" "\n"
                  R"({"query": "One day, Lily went to the", "choices": ["park to play with her friends.", "zzq xk jjv"], "gold": 0})" "\n");
  d.write("winogrande", R"({"context_options": ["qzx vvk plm", "Once upon a time, there was a little"], "continuation": "girl named Lily.", "gold": 1})" "\n");
  d.write("lambada_openai", R"({"context": "Once upon a", "continuation": "time"})" "\n");
  const auto rows = run_zeroshot(options_for(d, "copa,winogrande,lambada_openai"));
  ASSERT_EQ(rows.size(), 6u);  // 3 tasks x 2 schemes
  for (const auto& r : rows) {
    EXPECT_GT(r.n, 0) << r.task;
    EXPECT_DOUBLE_EQ(r.acc, 1.0) << r.task << " " << r.scheme;
    EXPECT_DOUBLE_EQ(r.acc_norm, 1.0) << r.task << " " << r.scheme;
  }
}

TEST(Zeroshot, LimitAndBadInput) {
  if (!std::filesystem::exists(shared_path("models/stories260K/stories260K.bin"))) GTEST_SKIP() << "shared data not found";
  TaskDir d("limits");
  d.write("piqa", R"({"query": "Question: a\n", "choices": ["b", "c"], "gold": 0})" "\n"
                  R"({"query": "Question: d\n", "choices": ["e", "f"], "gold": 1})" "\n");
  auto o = options_for(d, "piqa");
  o.limit = 1;
  EXPECT_EQ(run_zeroshot(o)[0].n, 1);
  d.write("boolq", R"({"query": "x", "choices": ["no", "yes"], "gold": 5})" "\n");
  try {
    run_zeroshot(options_for(d, "boolq"));
    FAIL() << "gold out of range accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("boolq.jsonl:1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(run_zeroshot(options_for(d, "nosuchtask")), std::invalid_argument);
  EXPECT_THROW(run_zeroshot(options_for(d, "siqa")), std::runtime_error);  // file missing
}

}  // namespace
