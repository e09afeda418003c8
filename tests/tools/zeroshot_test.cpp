// The zero-shot harness on a real model (stories260K) with hand-written items whose answer the
// model cannot miss, in every file format; and its bad-input errors.
#include "sharq/tools/zeroshot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <sys/stat.h>

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

std::string eval_error(const EvalOptions& o) {
  try {
    run_zeroshot(o);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "accepted";
}

// Numbers that look plausible but aren't: every field is type-checked, empty files and empty task
// lists are errors, never a 0.00% (or a 100%) row.
TEST(Zeroshot, EveryFieldIsTypeChecked) {
  if (!std::filesystem::exists(shared_path("models/stories260K/stories260K.bin"))) GTEST_SKIP() << "shared data not found";
  TaskDir d("fields");
  struct Case { std::string task, jsonl, want; };
  for (const Case& c : std::vector<Case>{
           {"copa", R"({"query": "a", "choices": "ab", "gold": 0})", "copa.jsonl:1: 'choices' must be an array of strings"},
           {"copa", R"({"query": "a", "choices": ["a", 7], "gold": 0})", "copa.jsonl:1: 'choices'[1] must be a string"},
           {"copa", R"({"query": "a", "choices": [], "gold": 0})", "'choices' is empty"},
           {"boolq", R"({"query": "a", "choices": ["yes"], "gold": 0})", "boolq.jsonl:1: 'choices' has 1 entry; a multiple-choice example needs at least 2"},
           {"winogrande", R"({"context_options": ["a"], "continuation": "z", "gold": 0})", "'context_options' has 1 entry"},
           {"copa", R"({"query": "a", "choices": ["a", "b"], "gold": 0, "gold": 1})", "copa.jsonl:1: the key \"gold\" appears twice"},
           {"copa", R"({"query": "a", "choices": ["a", "b"], "gold": 0.7})", "'gold' must be an integer index, got 0.7"},
           {"copa", R"({"query": "a", "choices": ["a", "b"], "gold": "1"})", "'gold' must be an integer index"},
           {"copa", R"({"query": "a", "choices": ["a", "b"], "gold": true})", "'gold' must be an integer index"},
           {"copa", R"({"query": "a", "choices": ["a", "b"], "gold": -1})", "'gold' -1 is out of range"},
           {"copa", R"({"query": "a", "choices": ["a", "b"]})", "no 'gold' field"},
           {"copa", R"({"query": 5, "choices": ["a", "b"], "gold": 0})", "'query' must be a string"},
           {"copa", R"(["a", "b"])", "expected a JSON object"},
           {"copa", "{not json", "copa.jsonl:1:"},
           {"winogrande", R"({"context_options": "xy", "continuation": "z", "gold": 0})", "'context_options' must be an array"},
           {"lambada_openai", R"({"context": "a", "continuation": 3})", "'continuation' must be a string"},
           {"copa", R"({"query": "a", "choices": ["a", ""], "gold": 0})", "'choices'[1] is empty"},
           {"lambada_openai", R"({"context": "a", "continuation": ""})", "'continuation' is empty"},
           {"copa", "", "copa.jsonl: no examples"},
           {"copa", "\n   \n\t\n", "copa.jsonl: no examples"},
       }) {
    d.write(c.task, c.jsonl + "\n");
    const std::string e = eval_error(options_for(d, c.task));
    EXPECT_NE(e.find(c.want), std::string::npos) << c.jsonl << " -> " << e;
  }
  std::filesystem::remove(d.dir / "siqa.jsonl");
  ASSERT_EQ(mkfifo((d.dir / "siqa.jsonl").c_str(), 0600), 0);  // would block a reader
  EXPECT_NE(eval_error(options_for(d, "siqa")).find("siqa.jsonl: is not a regular file"), std::string::npos);
  EXPECT_NE(eval_error(options_for(d, "")).find("--tasks: '' names no task"), std::string::npos);
  EXPECT_NE(eval_error(options_for(d, ",,")).find("names no task"), std::string::npos);
  EXPECT_NE(eval_error(options_for(d, "piqa,,copa")).find("--tasks: 'piqa,,copa' has an empty item"), std::string::npos);
  EXPECT_NE(eval_error(options_for(d, "piqa,")).find("has an empty item"), std::string::npos);
  EXPECT_NE(eval_error(options_for(d, "piqa,piqa")).find("names task 'piqa' twice"), std::string::npos);
  auto o = options_for(d, "copa");
  o.limit = -1;
  EXPECT_NE(eval_error(o).find("--limit: -1"), std::string::npos);
  // an example longer than the model's context (stories260K: 512) is cut from the left, as the
  // harness does, and counted; one whose continuation alone does not fit is an error naming it
  std::string long_text;
  for (int i = 0; i < 600; ++i) long_text += "the cat ";
  d.write("copa", R"({"query": "a", "choices": ["a", "b"], "gold": 0})" "\n" R"({"query": ")" + long_text +
                      R"(", "choices": ["a", "b"], "gold": 0})" "\n");
  const auto rows = run_zeroshot(options_for(d, "copa"));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].n, 2);
  EXPECT_EQ(rows[0].truncated, 1);
  d.write("copa", R"({"query": "a", "choices": ["a", ")" + long_text + R"("], "gold": 0})" "\n");
  const std::string e = eval_error(options_for(d, "copa"));
  EXPECT_NE(e.find("copa.jsonl:1: option 1: its continuation is"), std::string::npos) << e;
  EXPECT_NE(e.find("max_position_embeddings 512"), std::string::npos) << e;
}

TEST(Zeroshot, NonFiniteRowsAreNotReportedAsAccuracies) {
  std::vector<EvalRow> rows(2);
  rows[0] = {"piqa", "fp32", 10, 0.5, 0.6, 1.0, 0, 0};
  rows[1] = {"piqa", "nvfp4", 10, std::nan(""), std::nan(""), 1.0, 3, 0};
  const std::string t = format_eval_table(rows), j = format_eval_json(rows);
  EXPECT_NE(t.find("50.00%"), std::string::npos) << t;
  EXPECT_NE(t.find("NON-FINITE scores in 3 of 10"), std::string::npos) << t;
  EXPECT_EQ(t.find("nan"), std::string::npos) << t;
  EXPECT_NE(j.find("\"acc\": null"), std::string::npos) << j;
  EXPECT_NE(eval_nonfinite_summary(rows).find("piqa nvfp4"), std::string::npos);
  rows.pop_back();
  EXPECT_EQ(eval_nonfinite_summary(rows), "");
}

// The reader behind `eval`, on text in memory (what the fuzz target drives): counts, limits, and an
// error naming the file, line and field.
TEST(Zeroshot, TaskReaderChecksEveryLine) {
  const std::string arc = "{\"query\": \"Q1\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n\n"
                          "{\"query\": \"Q2\", \"choices\": [\"c\", \"d\", \"e\"], \"gold\": 2}\n";
  EXPECT_EQ(check_zeroshot_task(arc, "arc_easy", "arc_easy.jsonl"), 2u);
  EXPECT_EQ(check_zeroshot_task(arc, "arc_easy", "arc_easy.jsonl", 1), 1u);
  const std::string bad = "{\"query\": \"Q\", \"choices\": [\"a\", \"b\"], \"gold\": 0.7}\n";
  try {
    check_zeroshot_task(bad, "piqa", "piqa.jsonl");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("piqa.jsonl:1"), std::string::npos) << w;
    EXPECT_NE(w.find("gold"), std::string::npos) << w;
  }
  EXPECT_THROW(check_zeroshot_task("  \n\n", "boolq", "boolq.jsonl"), std::runtime_error);  // no example
  EXPECT_THROW(check_zeroshot_task(arc, "nosuch", "x.jsonl"), std::invalid_argument);
}

}  // namespace
