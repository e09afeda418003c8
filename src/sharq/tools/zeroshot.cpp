#include "sharq/tools/zeroshot.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

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

std::vector<Example> load_task(const std::string& dir, const std::string& task, int64_t limit) {
  const std::string path = dir + "/" + task + ".jsonl";
  std::ifstream f(path);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open (task '{}')", path, task));
  std::vector<Example> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(f, line) && (limit == 0 || static_cast<int64_t>(out.size()) < limit)) {
    ++lineno;
    if (line.empty()) continue;
    try {
      const nlohmann::json j = nlohmann::json::parse(line);
      Example ex;
      if (task == "winogrande") {
        for (const auto& c : j.at("context_options")) ex.options.push_back({c.get<std::string>(), with_leading_space(j.at("continuation").get<std::string>())});
        ex.gold = j.at("gold").get<int64_t>();
      } else if (task == "lambada_openai") {
        ex.options.push_back({j.at("context").get<std::string>(), with_leading_space(j.at("continuation").get<std::string>())});
        ex.greedy = true;
      } else {
        const char* delim = delimiter_of(task);
        if (!delim) throw std::runtime_error("unknown task");
        const std::string q = j.at("query").get<std::string>() + delim;
        for (const auto& c : j.at("choices")) ex.options.push_back({q, c.get<std::string>()});
        ex.gold = j.at("gold").get<int64_t>();
      }
      for (const auto& o : ex.options) ex.char_len.push_back(static_cast<double>(std::max<int64_t>(1, codepoints(o.continuation))));
      if (ex.gold < 0 || ex.gold >= static_cast<int64_t>(ex.options.size())) throw std::runtime_error("'gold' out of range");
      out.push_back(std::move(ex));
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{}:{}: {}", path, lineno, e.what()));
    }
  }
  return out;
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

}  // namespace

std::vector<EvalRow> run_zeroshot(const EvalOptions& opt) {
  const std::vector<Scheme> schemes = parse_scheme_list(opt.schemes);
  std::vector<std::string> tasks;
  {
    std::stringstream ss(opt.tasks);
    for (std::string t; std::getline(ss, t, ',');)
      if (!t.empty()) {
        if (t != "winogrande" && t != "lambada_openai" && !delimiter_of(t))
          throw std::invalid_argument(fmt::format("unknown task '{}' (known: arc_easy, arc_challenge, boolq, piqa, copa, "
                                                  "openbook_qa, siqa, winogrande, lambada_openai)", t));
        tasks.push_back(t);
      }
  }
  const ModelWeights weights = load_model_weights(opt.model_path);
  const auto tok = load_tokenizer_for(opt.model_path, opt.tokenizer_path);
  const int64_t V = weights.config.vocab_size;
  std::vector<EvalRow> rows;
  for (const auto& task : tasks) {
    const std::vector<Example> data = load_task(opt.data_dir, task, opt.limit);
    for (const auto& s : schemes) {
      const std::unique_ptr<Executor> executor = (opt.executor ? opt.executor : cpu_executor_factory())(weights, s);
      Executor& model = *executor;
      EvalRow row{task, s.name()};
      const auto t0 = std::chrono::steady_clock::now();
      double correct = 0, correct_norm = 0;
      std::vector<int32_t> ids;
      std::vector<double> lp;
      for (size_t e = 0; e < data.size(); ++e) {
        const Example& ex = data[e];
        std::vector<double> ll(ex.options.size());
        bool greedy_ok = true;
        for (size_t o = 0; o < ex.options.size(); ++o) {
          int64_t n_ctx;
          split_tokens(*tok, ex.options[o], ids, n_ctx);
          const int64_t T = static_cast<int64_t>(ids.size());
          StepEntry entry;
          entry.seq = model.create_sequence(T);
          entry.tokens = ids;
          entry.all_logits = true;
          const StepOutput out = model.step({entry});
          model.free_sequence(entry.seq);
          for (int64_t t = n_ctx; t < T; ++t) {  // token t predicted from position t - 1
            const float* r = out.logits_of(0, t - 1);
            log_softmax(r, V, lp);
            ll[o] += lp[ids[t]];
            greedy_ok = greedy_ok && argmax(r, V) == ids[t];
          }
        }
        if (ex.greedy) {
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
      row.acc = row.n ? correct / static_cast<double>(row.n) : 0.0;
      row.acc_norm = row.n ? correct_norm / static_cast<double>(row.n) : 0.0;
      row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      rows.push_back(row);
    }
  }
  return rows;
}

std::string format_eval_table(const std::vector<EvalRow>& rows) {
  std::string s = fmt::format("{:<16} {:<18} {:>6} {:>8} {:>9} {:>8}\n", "task", "scheme", "n", "acc", "acc_norm", "sec");
  for (const auto& r : rows)
    s += fmt::format("{:<16} {:<18} {:>6} {:>7.2f}% {:>8.2f}% {:>8.1f}\n", r.task, r.scheme, r.n, 100 * r.acc, 100 * r.acc_norm,
                     r.seconds);
  return s;
}

std::string format_eval_json(const std::vector<EvalRow>& rows) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rows)
    j.push_back({{"task", r.task}, {"scheme", r.scheme}, {"n", r.n}, {"acc", r.acc}, {"acc_norm", r.acc_norm}, {"seconds", r.seconds}});
  return j.dump(2) + "\n";
}

}  // namespace sharq
