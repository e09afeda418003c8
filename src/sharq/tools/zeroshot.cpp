#include "sharq/tools/zeroshot.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/core/json_checks.h"

#include "sharq/runtime/cpu/linear.h"
#include "sharq/model/tokenizer.h"
#include "sharq/model/weights.h"
#include "sharq/runtime/cpu/executor.h"
#include "sharq/tools/scoring.h"

namespace sharq {
namespace {

struct Request {            // one scored continuation
  std::string context, continuation;
};
struct Example {
  std::vector<Request> options;
  std::vector<double> char_len;  // per option, for acc_norm
  int64_t gold = 0;
  int64_t line = 0;              // in the task file, for messages
  bool greedy = false;           // lambada: correct iff greedy decoding reproduces the continuation
};

int64_t codepoints(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// (not `" " + s`: GCC 12 warns falsely about that, PR 105651)
std::string with_leading_space(const std::string& s) {
  std::string out(1, ' ');
  out.append(s);
  return out;
}

const char* delimiter_of(const std::string& task) {
  if (task == "arc_easy" || task == "arc_challenge" || task == "boolq") return "\nAnswer: ";
  if (task == "piqa") return "Answer: ";
  if (task == "copa" || task == "openbook_qa" || task == "siqa") return " ";
  return nullptr;
}

// Typed field access: a missing field or one of the wrong type is an error naming it.
const nlohmann::json& member(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) throw std::runtime_error(fmt::format("no '{}' field", key));
  return *it;
}

std::string string_field(const nlohmann::json& j, const char* key, bool nonempty = false) {
  const nlohmann::json& v = member(j, key);
  if (!v.is_string()) throw std::runtime_error(fmt::format("'{}' must be a string, got {}", key, v.dump()));
  if (nonempty && v.get_ref<const std::string&>().empty()) throw std::runtime_error(fmt::format("'{}' is empty", key));
  return v.get<std::string>();
}

std::vector<std::string> strings_field(const nlohmann::json& j, const char* key, bool nonempty = false) {
  const nlohmann::json& v = member(j, key);
  if (!v.is_array()) throw std::runtime_error(fmt::format("'{}' must be an array of strings, got {}", key, v.dump()));
  if (v.empty()) throw std::runtime_error(fmt::format("'{}' is empty", key));
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string())
      throw std::runtime_error(fmt::format("'{}'[{}] must be a string, got {}", key, i, v[i].dump()));
    if (nonempty && v[i].get_ref<const std::string&>().empty())
      throw std::runtime_error(fmt::format("'{}'[{}] is empty", key, i));
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

int64_t gold_field(const nlohmann::json& j, size_t n_options, const char* options_key) {
  // one option is always "right": the example would count as a correct answer whatever the model does
  if (n_options < 2) throw std::runtime_error(fmt::format("'{}' has {} entry; a multiple-choice example needs at least 2", options_key, n_options));
  const nlohmann::json& v = member(j, "gold");
  if (!v.is_number_integer())  // 0.7, "1", true: not an index
    throw std::runtime_error(fmt::format("'gold' must be an integer index, got {}", v.dump()));
  const int64_t g = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? -1 : v.get<int64_t>();
  if (g < 0 || g >= static_cast<int64_t>(n_options))
    throw std::runtime_error(fmt::format("'gold' {} is out of range (there are {} options)", v.dump(), n_options));
  return g;
}

// The examples of one task file's text (`name` for messages: the path); every field checked.
std::vector<Example> parse_task(std::istream& f, const std::string& task, int64_t limit, const std::string& path) {
  std::vector<Example> out;
  std::string line;
  int64_t lineno = 0;
  while ((limit == 0 || static_cast<int64_t>(out.size()) < limit) && std::getline(f, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank line
    try {
      const nlohmann::json j = json_checks::parse_unique(line);  // (std::invalid_argument: a key twice)
      if (!j.is_object()) throw std::runtime_error(fmt::format("expected a JSON object, got {}", j.type_name()));
      Example ex;
      ex.line = lineno;
      if (task == "winogrande") {
        const std::string cont = with_leading_space(string_field(j, "continuation", true));
        for (const auto& c : strings_field(j, "context_options")) ex.options.push_back({c, cont});
        ex.gold = gold_field(j, ex.options.size(), "context_options");
      } else if (task == "lambada_openai") {
        ex.options.push_back({string_field(j, "context"), with_leading_space(string_field(j, "continuation", true))});
        ex.greedy = true;
      } else {
        const char* delim = delimiter_of(task);
        if (!delim) throw std::runtime_error("unknown task");
        const std::string q = string_field(j, "query") + delim;
        for (const auto& c : strings_field(j, "choices", true)) ex.options.push_back({q, c});
        ex.gold = gold_field(j, ex.options.size(), "choices");
      }
      for (const auto& o : ex.options) ex.char_len.push_back(static_cast<double>(std::max<int64_t>(1, codepoints(o.continuation))));
      out.push_back(std::move(ex));
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{}:{}: {}", path, lineno, e.what()));
    }
  }
  if (f.bad()) throw std::runtime_error(fmt::format("{}: read failed", path));
  if (out.empty()) throw std::runtime_error(fmt::format("{}: no examples (task '{}'): the file is empty or blank", path, task));
  return out;
}

std::vector<Example> load_task(const std::string& dir, const std::string& task, int64_t limit) {
  const std::string path = dir + "/" + task + ".jsonl";
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(st)) throw std::runtime_error(fmt::format("{}: is a directory (task '{}')", path, task));
  if (std::filesystem::exists(st) && !std::filesystem::is_regular_file(st))  // a FIFO would block
    throw std::runtime_error(fmt::format("{}: is not a regular file (task '{}')", path, task));
  errno = 0;
  std::ifstream f(path);
  if (!f) {
    const int err = errno;
    throw std::runtime_error(fmt::format("{}: cannot open (task '{}'): {}", path, task,
                                         err ? std::generic_category().message(err) : "unknown error"));
  }
  return parse_task(f, task, limit, path);
}

// Harness split: trailing spaces of the context go to the continuation.
void split_tokens(const Tokenizer& tok, Request r, std::vector<int32_t>& all, int64_t& n_ctx) {
  const size_t keep = r.context.find_last_not_of(' ');
  const size_t cut = keep == std::string::npos ? 0 : keep + 1;
  r.continuation = r.context.substr(cut) + r.continuation;
  r.context.resize(cut);
  const std::vector<int32_t> ctx = tok.encode(r.context, true);
  all = tok.encode(r.context + r.continuation, true);
  n_ctx = static_cast<int64_t>(ctx.size());
  if (n_ctx < 1) n_ctx = 1;  // a first token is needed to predict from
  if (static_cast<int64_t>(all.size()) <= n_ctx) throw std::runtime_error("empty continuation after tokenization");
}

struct Tokenized {  // one option, tokenized once for every scheme
  std::vector<int32_t> ids;
  int64_t n_ctx = 0;
};

}  // namespace

std::vector<EvalRow> run_zeroshot(const EvalOptions& opt) {
  if (opt.limit < 0) throw std::invalid_argument(fmt::format("--limit: {} is not an integer >= 0", opt.limit));
  const std::vector<Scheme> schemes = parse_scheme_list(opt.schemes);
  std::vector<std::string> tasks;
  {
    std::stringstream ss(opt.tasks);
    for (std::string t; std::getline(ss, t, ',');)
      if (!t.empty()) {
        if (t != "winogrande" && t != "lambada_openai" && !delimiter_of(t))
          throw std::invalid_argument(fmt::format("unknown task '{}' (known: arc_easy, arc_challenge, boolq, piqa, copa, "
                                                  "openbook_qa, siqa, winogrande, lambada_openai)", t));
        if (std::find(tasks.begin(), tasks.end(), t) != tasks.end())
          throw std::invalid_argument(fmt::format("--tasks: '{}' names task '{}' twice", opt.tasks, t));
        tasks.push_back(t);
      }
    // an empty item between names is a typo (a list of nothing but commas names no task: below)
    if (!tasks.empty() && (opt.tasks.find(",,") != std::string::npos || opt.tasks.front() == ',' || opt.tasks.back() == ','))
      throw std::invalid_argument(fmt::format("--tasks: '{}' has an empty item", opt.tasks));
  }
  if (tasks.empty())
    throw std::invalid_argument(fmt::format("--tasks: '{}' names no task (known: arc_easy, arc_challenge, boolq, piqa, copa, "
                                            "openbook_qa, siqa, winogrande, lambada_openai)", opt.tasks));
  // every task file is read and checked before the (possibly large) model is loaded
  std::vector<std::vector<Example>> task_data;
  for (const auto& task : tasks) task_data.push_back(load_task(opt.data_dir, task, opt.limit));
  const ModelWeights weights = load_model_weights(opt.model_path, LoadOptions{opt.allow_nonfinite});
  const auto tok = load_tokenizer_for(opt.model_path, opt.tokenizer_path, weights.config);
  const int64_t V = weights.config.vocab_size, max_pos = weights.config.max_position_embeddings;
  std::vector<EvalRow> rows;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const std::string& task = tasks[ti];
    const std::vector<Example>& data = task_data[ti];
    const std::string path = opt.data_dir + "/" + task + ".jsonl";
    // tokenize once; an example longer than the model's context is cut from the left (the harness's
    // rule; EvalRow::truncated counts them) unless its continuation alone does not fit
    std::vector<std::vector<Tokenized>> toks(data.size());
    std::vector<char> truncated(data.size(), 0);
    for (size_t e = 0; e < data.size(); ++e)
      for (size_t o = 0; o < data[e].options.size(); ++o) {
        Tokenized t;
        try {
          split_tokens(*tok, data[e].options[o], t.ids, t.n_ctx);
        } catch (const std::exception& ex) {
          throw std::runtime_error(fmt::format("{}:{}: option {}: {}", path, data[e].line, o, ex.what()));
        }
        const int64_t T = static_cast<int64_t>(t.ids.size());
        if (max_pos > 0 && T > max_pos) {
          // lm-evaluation-harness: keep the last max_pos tokens (the context is cut from the left);
          // a continuation that does not fit on its own cannot be scored
          const int64_t n_cont = T - t.n_ctx;
          if (n_cont > max_pos - 1)
            throw std::invalid_argument(fmt::format("{}:{}: option {}: its continuation is {} tokens; with at least one "
                                                    "token of context it does not fit the model's max_position_embeddings {}",
                                                    path, data[e].line, o, n_cont, max_pos));
          const int64_t drop = T - max_pos;
          t.ids.erase(t.ids.begin(), t.ids.begin() + drop);
          t.n_ctx -= drop;
          truncated[e] = true;
        }
        toks[e].push_back(std::move(t));
      }
    for (const auto& s : schemes) {
      const std::unique_ptr<Executor> executor = (opt.executor ? opt.executor : cpu_executor_factory())(weights, s);
      Executor& model = *executor;
      EvalRow row{task, s.name()};
      row.truncated = std::count(truncated.begin(), truncated.end(), 1);
      const auto t0 = std::chrono::steady_clock::now();
      double correct = 0, correct_norm = 0;
      std::vector<double> lp;
      for (size_t e = 0; e < data.size(); ++e) {
        const Example& ex = data[e];
        std::vector<double> ll(ex.options.size());
        bool greedy_ok = true, finite = true;
        for (size_t o = 0; o < ex.options.size(); ++o) {
          const std::vector<int32_t>& ids = toks[e][o].ids;
          const int64_t n_ctx = toks[e][o].n_ctx;
          const int64_t T = static_cast<int64_t>(ids.size());
          StepEntry entry;
          entry.seq = model.create_sequence(T);
          entry.tokens = ids;
          entry.all_logits = true;
          const StepOutput out = model.step({entry});
          model.free_sequence(entry.seq);
          for (int64_t t = n_ctx; t < T; ++t) {  // token t predicted from position t - 1
            const float* r = out.logits_of(0, t - 1);
            if (!std::all_of(r, r + V, [](float x) { return std::isfinite(x); })) finite = false;
            log_softmax(r, V, lp);
            ll[o] += lp[ids[t]];
            greedy_ok = greedy_ok && argmax(r, V) == ids[t];
          }
          finite = finite && std::isfinite(ll[o]);
        }
        if (!finite) {
          ++row.nonfinite;  // not scored: neither right nor wrong
        } else if (ex.greedy) {
          correct += greedy_ok;
          correct_norm += greedy_ok;
        } else {
          size_t best = 0, best_norm = 0;
          for (size_t o = 1; o < ll.size(); ++o) {
            if (ll[o] > ll[best]) best = o;
            if (ll[o] / ex.char_len[o] > ll[best_norm] / ex.char_len[best_norm]) best_norm = o;
          }
          correct += static_cast<int64_t>(best) == ex.gold;
          correct_norm += static_cast<int64_t>(best_norm) == ex.gold;
        }
        if (opt.progress && (e + 1 == data.size() || e % 20 == 0))
          std::fprintf(stderr, "\r%s %s: %zu/%zu", task.c_str(), row.scheme.c_str(), e + 1, data.size());
      }
      if (opt.progress) std::fputc('\n', stderr);
      row.n = static_cast<int64_t>(data.size());
      row.acc = row.nonfinite ? std::nan("") : correct / static_cast<double>(row.n);
      row.acc_norm = row.nonfinite ? std::nan("") : correct_norm / static_cast<double>(row.n);
      row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      rows.push_back(row);
    }
  }
  return rows;
}

std::string format_eval_table(const std::vector<EvalRow>& rows) {
  std::string s = fmt::format("{:<16} {:<18} {:>6} {:>8} {:>9} {:>8}\n", "task", "scheme", "n", "acc", "acc_norm", "sec");
  for (const auto& r : rows) {
    if (r.nonfinite) {
      s += fmt::format("{:<16} {:<18} {:>6} {:>8} {:>9} {:>8.1f}  NON-FINITE scores in {} of {} examples\n", r.task, r.scheme,
                       r.n, "-", "-", r.seconds, r.nonfinite, r.n);
      continue;
    }
    s += fmt::format("{:<16} {:<18} {:>6} {:>7.2f}% {:>8.2f}% {:>8.1f}\n", r.task, r.scheme, r.n, 100 * r.acc, 100 * r.acc_norm,
                     r.seconds);
  }
  return s;
}

std::string format_eval_json(const std::vector<EvalRow>& rows) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rows)
    j.push_back({{"task", r.task}, {"scheme", r.scheme}, {"n", r.n},
                 {"acc", r.nonfinite ? nlohmann::json(nullptr) : nlohmann::json(r.acc)},
                 {"acc_norm", r.nonfinite ? nlohmann::json(nullptr) : nlohmann::json(r.acc_norm)},
                 {"nonfinite_examples", r.nonfinite}, {"truncated_examples", r.truncated}, {"seconds", r.seconds}});
  return j.dump(2) + "\n";
}

std::string eval_nonfinite_summary(const std::vector<EvalRow>& rows) {
  std::string names;
  for (const auto& r : rows)
    if (r.nonfinite) names += fmt::format("{}{} {} ({} of {} examples)", names.empty() ? "" : ", ", r.task, r.scheme, r.nonfinite, r.n);
  return names.empty() ? std::string() : "non-finite (NaN/Inf) scores from " + names + "; their accuracies are not reported";
}

size_t check_zeroshot_task(const std::string& text, const std::string& task, const std::string& name, int64_t limit) {
  if (!delimiter_of(task) && task != "winogrande" && task != "lambada_openai")
    throw std::invalid_argument(fmt::format("unknown task '{}'", task));
  std::istringstream in(text);
  return parse_task(in, task, limit, name).size();
}

}  // namespace sharq
