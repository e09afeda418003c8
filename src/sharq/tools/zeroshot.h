// `sharq eval`: zero-shot accuracy on the local multiple-choice sets (../shared/data/zeroshot/),
// with lm-evaluation-harness semantics.
//
// Each choice is scored by the log-likelihood of its tokens given the context (the whole
// context + choice runs as one sequence, as the harness does):
//   acc      = the highest log-likelihood is the gold choice;
//   acc_norm = the same after dividing each log-likelihood by the choice's length in characters.
// Context/continuation split as the harness does: trailing spaces of the context move to the
// continuation; continuation tokens = tokens(context + continuation) after tokens(context).
// Formats (one JSON object a line):
//   arc_easy, arc_challenge, boolq: query + "\nAnswer: " + choice      piqa: query + "Answer: " + choice
//   copa, openbook_qa, siqa: query + " " + choice
//   winogrande: context_options[i] + " " + continuation (partial scoring: only the continuation)
//   lambada_openai: context + " " + continuation; acc = greedy decoding reproduces every token
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sharq/runtime/step.h"

namespace sharq {

struct EvalOptions {
  std::string model_path, tokenizer_path;
  std::string data_dir = "../shared/data/zeroshot";  // folder with <task>.jsonl
  std::string tasks = "piqa,arc_easy,winogrande";
  std::string schemes = "fp32,nvfp4,sharq";
  int64_t limit = 0;     // first N examples of each task (0 = all)
  bool progress = true;
  ExecutorFactory executor;  // null: the CPU reference executor
};

struct EvalRow {
  std::string task, scheme;
  int64_t n = 0;
  double acc = 0, acc_norm = 0;  // acc_norm = acc for lambada and winogrande
  double seconds = 0;
};

std::vector<EvalRow> run_zeroshot(const EvalOptions& opt);
std::string format_eval_table(const std::vector<EvalRow>& rows);
std::string format_eval_json(const std::vector<EvalRow>& rows);

}  // namespace sharq
