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
// Every field is type-checked (query/context/continuation: strings, the continuation not empty;
// choices/context_options: a non-empty array of strings, no choice empty; gold: an integer index into them; a JSON object a line, blank lines
// skipped); a task file without examples and an empty --tasks are errors naming the file / line.
// An example longer than the model's context (max_position_embeddings) keeps its last
// max_position_embeddings tokens, as lm-evaluation-harness does (EvalRow::truncated counts them;
// the CLI prints a note); one whose continuation alone does not fit is an error naming it.
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
  int64_t limit = 0;     // first N examples of each task (0 = all; negative: an error)
  bool progress = true;
  bool allow_nonfinite = false;  // LoadOptions::allow_nonfinite (accuracies stay honest: EvalRow::nonfinite)
  ExecutorFactory executor;  // null: the CPU reference executor
};

struct EvalRow {
  std::string task, scheme;
  int64_t n = 0;
  double acc = 0, acc_norm = 0;  // acc_norm = acc for lambada and winogrande
  double seconds = 0;
  // Examples whose log-likelihoods were not finite (NaN/Inf logits). When not 0 the accuracies are
  // not meaningful: the report says "non-finite" (JSON: null) and eval_nonfinite_summary() is not "".
  int64_t nonfinite = 0;
  int64_t truncated = 0;  // examples cut from the left to the model's context
};

std::vector<EvalRow> run_zeroshot(const EvalOptions& opt);

// The reader of one task file's text, exactly as `eval` reads <task>.jsonl (every field typed and
// range-checked; blank lines skipped; no example is an error): the number of examples (at most
// `limit` when > 0). Throws std::runtime_error "<name>:<line>: <what>" for a bad file and
// std::invalid_argument for an unknown task. For the fuzz target and tools that check files.
size_t check_zeroshot_task(const std::string& text, const std::string& task, const std::string& name, int64_t limit = 0);
std::string format_eval_table(const std::vector<EvalRow>& rows);
std::string format_eval_json(const std::vector<EvalRow>& rows);
// "" when every row is finite; else one sentence naming the (task, scheme) rows with non-finite scores.
std::string eval_nonfinite_summary(const std::vector<EvalRow>& rows);

}  // namespace sharq
