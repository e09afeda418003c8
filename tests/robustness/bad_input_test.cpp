// The bad-input corpus: every malformed checkpoint, tokenizer, data file, zero-shot file, .npy
// array and flag below is built at test time (in a temporary folder) from the real models and data
// in ../shared, and the CLI is run on it as a child process. Each case asserts:
//   - the expected exit status (non-zero for errors; 0 where the documented behaviour is to accept),
//   - for errors, a message that names the file, field, tensor or flag at fault,
//   - no crash (no signal, no sanitizer report), no hang (a per-child timeout, then SIGKILL),
//   - bounded peak memory: ru_maxrss from wait4 (scaled under ASan), and a watchdog that kills a
//     child whose resident set runs far past the bound (so a runaway allocation cannot take the
//     machine down before wait4 reports it).
// docs/robustness.md states the policy these cases encode. Cases are one gtest each
// (BadInput/Corpus.Run/<category>_<name>), so a failure names its case.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Args = std::vector<std::string>;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

constexpr double kMemScale = kSanitized ? 3.0 : 1.0;
constexpr double kDefaultMemGiB = 1.5;
constexpr int kDefaultTimeoutS = kSanitized ? 60 : 15;

// ---- files -----------------------------------------------------------------------------------

std::string shared_dir() { return std::string(SHARQ_SOURCE_DIR) + "/../shared"; }

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("bad_input_test: cannot read " + p.string());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("bad_input_test: cannot write " + p.string());
}

void put_u32(std::string& s, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 255);
}
void put_u64(std::string& s, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 255);
}
uint32_t get_u32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}
uint64_t get_u64(const std::string& s, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}
void put_f32(std::string& s, size_t at, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  put_u32(s, at, u);
}

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  const size_t p = s.find(from);
  if (p == std::string::npos) throw std::runtime_error("bad_input_test: pattern not found: " + from);
  return s.replace(p, from.size(), to);
}

// ---- the child process -------------------------------------------------------------------------

struct RunResult {
  int exit_code = -1;
  int signal = 0;
  bool timed_out = false;
  bool killed_for_memory = false;
  long maxrss_kb = 0;
  std::string out;  // stdout + stderr, interleaved
};

long rss_kb_of(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/statm");
  long pages_total = 0, pages_resident = 0;
  if (!(f >> pages_total >> pages_resident)) return 0;
  return pages_resident * (sysconf(_SC_PAGESIZE) / 1024);
}

RunResult run_cli(const Args& args, int timeout_s, long kill_rss_kb) {
  RunResult r;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);

  std::vector<std::string> argv_s = {SHARQ_CLI_PATH};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  // the environment, with one OpenMP thread (several cases run side by side on few cores)
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "OMP_NUM_THREADS=", 16) != 0) env_s.emplace_back(*e);
  env_s.emplace_back("OMP_NUM_THREADS=1");
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    throw std::runtime_error(std::string("posix_spawn ") + argv[0] + ": " + std::strerror(rc));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  bool open = true, killed = false;
  char buf[65536];
  while (open) {
    pollfd p{fds[0], POLLIN, 0};
    const int n = poll(&p, 1, 20);
    if (n > 0) {
      const ssize_t got = read(fds[0], buf, sizeof buf);
      if (got > 0) {
        if (r.out.size() < (1u << 20)) r.out.append(buf, static_cast<size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        open = false;
      }
    }
    if (!killed) {
      if (std::chrono::steady_clock::now() > deadline) {
        r.timed_out = true;
        kill(pid, SIGKILL);
        killed = true;
      } else if (rss_kb_of(pid) > kill_rss_kb) {
        r.killed_for_memory = true;
        kill(pid, SIGKILL);
        killed = true;
      }
    }
  }
  close(fds[0]);
  int status = 0;
  rusage ru{};
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  r.maxrss_kb = ru.ru_maxrss;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

// ---- cases -------------------------------------------------------------------------------------

enum class Want { ok, error, ok_or_error };

// What a case's setup sees: its own empty folder and the shared root.
struct Ctx {
  fs::path dir;
  std::string S;  // ../shared
  std::string s260() const { return S + "/models/stories260K/stories260K.bin"; }
  std::string tok512() const { return S + "/models/stories260K/tok512.bin"; }
  std::string lm30() const { return S + "/models/sharq-lm-30m"; }
  std::string qwen3_json() const { return S + "/tokenizers/qwen3/tokenizer.json"; }
  std::string path(const std::string& name) const { return (dir / name).string(); }
};

struct Case {
  std::string category, name;
  std::function<Args(const Ctx&)> setup;  // writes the bad files, returns the CLI arguments
  Want want = Want::error;
  // Each group must have at least one of its strings in the output (checked when the run fails).
  std::vector<std::vector<std::string>> needles;
  double mem_gib = kDefaultMemGiB;
  int timeout_s = kDefaultTimeoutS;
};

std::vector<std::vector<std::string>> one(std::initializer_list<std::string> any) { return {std::vector<std::string>(any)}; }

// --- builders shared by many cases

Args gen260(const std::string& model, const std::string& tok) { return {"generate", model, "--tokenizer", tok, "-n", "4"}; }
Args gen_hf(const std::string& dir) { return {"generate", dir, "-n", "4"}; }

// A copy of sharq-lm-30m as links to the shared files, except the ones given (written here).
std::string hf_dir(const Ctx& c, const std::string& name, const std::map<std::string, std::string>& replaced,
                   const std::vector<std::string>& removed = {}) {
  const fs::path d = c.dir / name;
  fs::create_directories(d);
  for (const auto& e : fs::directory_iterator(c.lm30())) {
    const std::string f = e.path().filename().string();
    if (replaced.count(f) || std::find(removed.begin(), removed.end(), f) != removed.end()) continue;
    fs::create_symlink(e.path(), d / f);
  }
  for (const auto& [f, bytes] : replaced) spit(d / f, bytes);
  return d.string();
}

json lm30_config(const Ctx& c) { return json::parse(slurp(c.lm30() + "/config.json")); }

std::string shard_name(int i) {
  char b[64];
  std::snprintf(b, sizeof b, "model-%05d-of-00005.safetensors", i);
  return b;
}

// safetensors: header JSON, data start
struct St {
  json header;
  size_t data_start = 0;
};
St st_parse(const std::string& bytes) {
  const uint64_t n = get_u64(bytes, 0);
  return {json::parse(bytes.substr(8, n)), 8 + n};
}
std::string st_build(const json& header, const std::string& data) {
  const std::string h = header.dump();
  std::string out(8, '\0');
  put_u64(out, 0, h.size());
  return out + h + data;
}

// the shard of sharq-lm-30m that holds `tensor`
std::string shard_of(const Ctx& c, const std::string& tensor) {
  const json idx = json::parse(slurp(c.lm30() + "/model.safetensors.index.json"));
  return idx.at("weight_map").at(tensor).get<std::string>();
}

// sharq-lm-30m with element `elem` of `tensor` (BF16) set to `bf16_bits`
std::string hf_with_value(const Ctx& c, const std::string& name, const std::string& tensor, size_t elem, uint16_t bits) {
  const std::string shard = shard_of(c, tensor);
  std::string bytes = slurp(c.lm30() + "/" + shard);
  const St st = st_parse(bytes);
  const size_t at = st.data_start + st.header.at(tensor).at("data_offsets")[0].get<size_t>() + 2 * elem;
  bytes[at] = static_cast<char>(bits & 255);
  bytes[at + 1] = static_cast<char>(bits >> 8);
  return hf_dir(c, name, {{shard, bytes}});
}

// sharq-lm-30m with one more shard holding `extra` tensors (zeros, BF16) listed in the index
std::string hf_with_extra(const Ctx& c, const std::string& name, const std::vector<std::pair<std::string, std::vector<int64_t>>>& extra,
                          const json* config = nullptr) {
  json header = json::object();
  size_t off = 0;
  json idx = json::parse(slurp(c.lm30() + "/model.safetensors.index.json"));
  for (const auto& [t, shape] : extra) {
    size_t n = 2;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    header[t] = {{"dtype", "BF16"}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    off += n;
    idx["weight_map"][t] = "model-extra.safetensors";
  }
  std::map<std::string, std::string> files = {{"model-extra.safetensors", st_build(header, std::string(off, '\0'))},
                                              {"model.safetensors.index.json", idx.dump(2)}};
  if (config) files["config.json"] = config->dump(2);
  return hf_dir(c, name, files);
}

// --- .npy
std::string npy(const std::string& dict, const std::string& data, int major = 1) {
  std::string h = dict;
  const size_t pre = major == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  if (major == 1) {
    out += static_cast<char>(h.size() & 255);
    out += static_cast<char>(h.size() >> 8);
  } else {
    std::string l(4, '\0');
    put_u32(l, 0, static_cast<uint32_t>(h.size()));
    out += l;
  }
  return out + h + data;
}
std::string f32_data(size_t n, float scale = 1.0f) {
  std::string d(4 * n, '\0');
  for (size_t i = 0; i < n; ++i) put_f32(d, 4 * i, scale * std::sin(0.37f * static_cast<float>(i) + 0.1f));
  return d;
}
std::string dict_f4(const std::string& shape) { return "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }"; }
const std::string kXGood = "(4, 64)";

// opcheck on X (given bytes) and a good W 16 x 64
Args opcheck_xw(const Ctx& c, const std::string& xname, const std::string& xbytes) {
  spit(c.dir / xname, xbytes);
  spit(c.dir / "w.npy", npy(dict_f4("(16, 64)"), f32_data(16 * 64)));
  return {"opcheck", "--x", c.path(xname), "--w", c.path("w.npy"), "--schemes", "fp32,nvfp4"};
}

// --- zero-shot: a folder with the first 3 lines of every task
const std::vector<std::string> kTasks = {"arc_challenge", "arc_easy", "boolq", "copa", "lambada_openai",
                                         "openbook_qa", "piqa", "siqa", "winogrande"};
std::vector<std::string> first_lines(const Ctx& c, const std::string& task, int n) {
  std::ifstream f(c.S + "/data/zeroshot/" + task + ".jsonl");
  std::vector<std::string> out;
  std::string line;
  while (static_cast<int>(out.size()) < n && std::getline(f, line))
    if (line.size() < 700) out.push_back(line);  // short examples: stories260K's context is 512 tokens
  return out;
}
std::string join_lines(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& l : v) s += l + "\n";
  return s;
}
std::string zs_dir(const Ctx& c, const std::string& task, const std::string& content) {
  const fs::path d = c.dir / "zs";
  fs::create_directories(d);
  spit(d / (task + ".jsonl"), content);
  return d.string();
}
Args eval260(const Ctx& c, const std::string& dir, const std::string& tasks) {
  return {"eval", c.s260(), "--tokenizer", c.tok512(), "--tasks", tasks, "--schemes", "fp32", "--data-dir", dir, "-q"};
}
// the task's 3 lines with line 0's JSON edited
std::string zs_edit(const Ctx& c, const std::string& task, const std::function<void(json&)>& edit) {
  auto lines = first_lines(c, task, 3);
  json j = json::parse(lines[0]);
  edit(j);
  lines[0] = j.dump();
  return join_lines(lines);
}

// --- ppl/analyze
Args ppl260(const Ctx& c, const std::string& data) {
  return {"ppl", c.s260(), "--tokenizer", c.tok512(), "--data", data, "--ctx", "16", "--max-windows", "1", "--schemes", "fp32", "-q"};
}
Args analyze260(const Ctx& c, const std::string& data) {
  return {"analyze", c.s260(), "--tokenizer", c.tok512(), "--data", data, "--tokens", "16", "--schemes", "fp32"};
}

// --- a small byte-level BPE tokenizer.json (fits stories260K's 512-entry vocabulary)
json small_bpe(const Ctx& c) {
  (void)c;
  std::vector<uint32_t> cps;
  for (int b = 0; b < 256; ++b) cps.push_back(0);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool self = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    cps[b] = self ? b : 256 + n++;
  }
  auto utf8 = [](uint32_t cp) {
    std::string s;
    if (cp < 0x80) s += static_cast<char>(cp);
    else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 63));
    } else {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 63));
      s += static_cast<char>(0x80 | (cp & 63));
    }
    return s;
  };
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[utf8(cps[b])] = b;
  const std::string sp = utf8(cps[' ']);
  vocab["th"] = 256;
  vocab["the"] = 257;
  vocab[sp + "t"] = 258;
  json merges = json::array({"t h", "th e", sp + " t"});
  return {{"version", "1.0"},
          {"added_tokens", json::array({{{"id", 259}, {"content", "<|endoftext|>"}, {"single_word", false}, {"lstrip", false},
                                         {"rstrip", false}, {"normalized", false}, {"special", true}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                     {"vocab", vocab}, {"merges", merges}}}};
}
Args gen260_json(const Ctx& c, const std::string& name, const std::string& text) {
  spit(c.dir / name, text);
  Args a = gen260(c.s260(), c.path(name));
  a.insert(a.end(), {"-p", "the"});  // this tokenizer has no BOS: generation needs a prompt
  return a;
}

// tok512.bin entry boundaries (offset of entry i; entry count + 1 = the file end)
std::vector<size_t> tok_entries(const std::string& b) {
  std::vector<size_t> at;
  size_t p = 4;
  while (p + 8 <= b.size()) {
    at.push_back(p);
    p += 8 + get_u32(b, p + 4);
  }
  at.push_back(p);
  return at;
}

// ---- the table ---------------------------------------------------------------------------------

std::vector<Case> build_cases() {
  std::vector<Case> v;
  auto add = [&](std::string cat, std::string name, std::function<Args(const Ctx&)> setup, Want want,
                 std::vector<std::vector<std::string>> needles = {}) {
    Case k;
    k.category = std::move(cat);
    k.name = std::move(name);
    k.setup = std::move(setup);
    k.want = want;
    k.needles = std::move(needles);
    v.push_back(std::move(k));
  };
  const Want OK = Want::ok, ERR = Want::error, EITHER = Want::ok_or_error;

  // ===== loaders: llama2.c checkpoint bytes
  add("loader", "llama2c_control", [](const Ctx& c) { return gen260(c.s260(), c.tok512()); }, OK);
  {
    const std::vector<size_t> fixed = {0, 1, 3, 4, 12, 24, 27, 28, 29, 31, 32, 100, 1000, 4096, 131100, 131101};
    for (size_t off : fixed) {
      const std::string f = "s260_trunc_" + std::to_string(off) + ".bin";
      add("loader", "llama2c_trunc_at_" + std::to_string(off), [f, off](const Ctx& c) {
        spit(c.dir / f, slurp(c.s260()).substr(0, off));
        return gen260(c.path(f), c.tok512());
      }, ERR, one({f}));
    }
    for (int k = 1; k <= 22; ++k) {
      const std::string f = "s260_trunc_frac" + std::to_string(k) + ".bin";
      add("loader", "llama2c_trunc_frac_" + std::to_string(k) + "_of_23", [f, k](const Ctx& c) {
        const std::string b = slurp(c.s260());
        spit(c.dir / f, b.substr(0, b.size() * k / 23));
        return gen260(c.path(f), c.tok512());
      }, ERR, one({f}));
    }
    for (int minus : {1, 4}) {
      const std::string f = "s260_trunc_end_minus_" + std::to_string(minus) + ".bin";
      add("loader", "llama2c_trunc_end_minus_" + std::to_string(minus), [f, minus](const Ctx& c) {
        const std::string b = slurp(c.s260());
        spit(c.dir / f, b.substr(0, b.size() - minus));
        return gen260(c.path(f), c.tok512());
      }, ERR, one({f}));
    }
    add("loader", "llama2c_trailing_bytes", [](const Ctx& c) {
      spit(c.dir / "s260_trailing.bin", slurp(c.s260()) + std::string(4096, '\0'));
      return gen260(c.path("s260_trailing.bin"), c.tok512());
    }, ERR, one({"s260_trailing.bin"}));
    const char* fields[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    const std::vector<std::pair<std::string, uint32_t>> values = {{"zero", 0u}, {"minus1", 0xffffffffu}, {"int_max", 0x7fffffffu}, {"three", 3u}};
    for (int i = 0; i < 7; ++i)
      for (const auto& [vn, val] : values) {
        const std::string f = std::string("s260_hdr_") + fields[i] + "_" + vn + ".bin";
        add("loader", std::string("llama2c_header_") + fields[i] + "_" + vn, [f, i, val = val](const Ctx& c) {
          std::string b = slurp(c.s260());
          put_u32(b, 4 * i, val);
          spit(c.dir / f, b);
          return gen260(c.path(f), c.tok512());
        }, ERR, one({f}));
      }
    add("loader", "llama2c_versioned_magic", [](const Ctx& c) {
      std::string b = slurp(c.s260());
      put_u32(b, 0, 0x616b3432u);
      spit(c.dir / "s260_ak42.bin", b);
      return gen260(c.path("s260_ak42.bin"), c.tok512());
    }, ERR, one({"s260_ak42.bin"}));
  }

  // ===== consistency: NaN/Inf in llama2.c weights (header 28 bytes; embedding 512x64; rms_att 5x64; wq 5x64x64)
  {
    struct Nf { std::string name; size_t float_index; float value; std::vector<std::string> tensor; };
    const float nan = std::nanf(""), inf = HUGE_VALF;
    const std::vector<Nf> nfs = {
        {"embedding_nan", 7, nan, {"embed_tokens", "token_embedding_table"}},
        {"embedding_inf", 100, inf, {"embed_tokens", "token_embedding_table"}},
        {"attn_norm_nan", 512 * 64 + 3, nan, {"input_layernorm", "rms_att_weight"}},
        {"wq_layer0_nan", 512 * 64 + 5 * 64 + 10, nan, {"q_proj", "wq"}},
        {"wq_layer0_neg_inf", 512 * 64 + 5 * 64 + 11, -inf, {"q_proj", "wq"}},
    };
    for (const auto& n : nfs) {
      const std::string f = "s260_" + n.name + ".bin";
      add("consistency", "llama2c_" + n.name, [f, n](const Ctx& c) {
        std::string b = slurp(c.s260());
        put_f32(b, 28 + 4 * n.float_index, n.value);
        spit(c.dir / f, b);
        return gen260(c.path(f), c.tok512());
      }, ERR, {n.tensor});
    }
    add("consistency", "llama2c_nan_allowed", [nan](const Ctx& c) {
      std::string b = slurp(c.s260());
      put_f32(b, 28 + 4 * (512 * 64 + 5 * 64 + 10), nan);
      spit(c.dir / "s260_nan_ok.bin", b);
      Args a = gen260(c.path("s260_nan_ok.bin"), c.tok512());
      a.push_back("--allow-nonfinite");
      return a;
    }, EITHER, one({"not finite", "non-finite"}));  // loads; generation may then refuse NaN logits by name
  }

  // ===== loaders: sharded safetensors bytes (sharq-lm-30m)
  add("loader", "hf_control", [](const Ctx& c) { return gen_hf(c.lm30()); }, OK);
  for (int s = 1; s <= 5; ++s) {
    const std::string shard = shard_name(s);
    const std::vector<std::string> where = {"0", "4", "8", "9", "header_half", "header_end", "data_half", "end_minus_1"};
    for (const std::string& w : where) {
      add("loader", "hf_shard" + std::to_string(s) + "_trunc_" + w, [shard, w](const Ctx& c) {
        const std::string b = slurp(c.lm30() + "/" + shard);
        const size_t hdr = 8 + get_u64(b, 0);
        size_t off = 0;
        if (w == "header_half") off = 8 + (hdr - 8) / 2;
        else if (w == "header_end") off = hdr;
        else if (w == "data_half") off = hdr + (b.size() - hdr) / 2;
        else if (w == "end_minus_1") off = b.size() - 1;
        else off = std::stoul(w);
        return gen_hf(hf_dir(c, "m", {{shard, b.substr(0, off)}}));
      }, ERR, one({shard}));
    }
  }
  {
    const std::string s5 = shard_name(5);
    auto st_case = [&](const std::string& name, std::function<std::string(const std::string&)> mutate,
                       std::vector<std::vector<std::string>> needles) {
      add("loader", "safetensors_" + name, [s5, mutate](const Ctx& c) {
        return gen_hf(hf_dir(c, "m", {{s5, mutate(slurp(c.lm30() + "/" + s5))}}));
      }, ERR, std::move(needles));
    };
    const auto shard5 = one({s5});
    st_case("header_len_zero", [](std::string b) { put_u64(b, 0, 0); return b; }, shard5);
    st_case("header_len_one", [](std::string b) { put_u64(b, 0, 1); return b; }, shard5);
    st_case("header_len_huge", [](std::string b) { put_u64(b, 0, 0x7fffffffffffffffull); return b; }, shard5);
    st_case("header_len_file_size", [](std::string b) { put_u64(b, 0, b.size()); return b; }, shard5);
    st_case("header_len_minus_one", [](std::string b) { put_u64(b, 0, get_u64(b, 0) - 1); return b; }, shard5);
    st_case("header_not_json", [](std::string b) { b[8] = 'x'; return b; }, shard5);
    st_case("header_byte_ff", [](std::string b) { b[20] = '\xff'; return b; }, shard5);
    auto hdr_edit = [](std::function<void(json&)> f) {
      return [f](const std::string& b) {
        St st = st_parse(b);
        f(st.header);
        return st_build(st.header, b.substr(st.data_start));
      };
    };
    st_case("dtype_f64", hdr_edit([](json& h) { h["lm_head.weight"]["dtype"] = "F64"; }), {{s5}, {"lm_head.weight"}});
    st_case("dtype_i8", hdr_edit([](json& h) { h["lm_head.weight"]["dtype"] = "I8"; }), {{s5}, {"lm_head.weight"}});
    st_case("dtype_number", hdr_edit([](json& h) { h["lm_head.weight"]["dtype"] = 16; }), {{s5}, {"lm_head.weight", "dtype"}});
    st_case("shape_vs_offsets", hdr_edit([](json& h) { h["lm_head.weight"]["shape"] = {4096, 513}; }), {{s5}, {"lm_head.weight"}});
    st_case("shape_negative", hdr_edit([](json& h) { h["lm_head.weight"]["shape"] = {-4096, -512}; }), {{s5}, {"lm_head.weight"}});
    st_case("shape_overflow", hdr_edit([](json& h) { h["lm_head.weight"]["shape"] = {4294967296ull, 4294967296ull}; }), {{s5}, {"lm_head.weight"}});
    st_case("offsets_past_end", hdr_edit([](json& h) { h["lm_head.weight"]["data_offsets"] = {2, 4194306}; }), {{s5}, {"lm_head.weight"}});
    st_case("offsets_reversed", hdr_edit([](json& h) { h["lm_head.weight"]["data_offsets"] = {4194304, 0}; }), {{s5}, {"lm_head.weight"}});
    st_case("offsets_missing", hdr_edit([](json& h) { h["lm_head.weight"].erase("data_offsets"); }), {{s5}, {"lm_head.weight", "data_offsets"}});
    // the tensor gone with its bytes (a well-formed shard that lacks it), and only its header entry gone
    // (its bytes then belong to no tensor: the shard itself is refused)
    st_case("tensor_missing", [](const std::string& b) {
      St st = st_parse(b);
      st.header.erase("lm_head.weight");
      return st_build(st.header, "");
    }, one({"lm_head.weight"}));
    st_case("tensor_entry_missing", hdr_edit([](json& h) { h.erase("lm_head.weight"); }), {{s5}, {"trailing bytes"}});
    add("loader", "index_truncated", [](const Ctx& c) {
      const std::string b = slurp(c.lm30() + "/model.safetensors.index.json");
      return gen_hf(hf_dir(c, "m", {{"model.safetensors.index.json", b.substr(0, b.size() / 2)}}));
    }, ERR, one({"model.safetensors.index.json"}));
    add("loader", "index_empty", [](const Ctx& c) { return gen_hf(hf_dir(c, "m", {{"model.safetensors.index.json", ""}})); }, ERR,
        one({"model.safetensors.index.json"}));
    add("loader", "index_missing_shard_file", [](const Ctx& c) { return gen_hf(hf_dir(c, "m", {}, {shard_name(3)})); }, ERR,
        one({shard_name(3)}));
    add("loader", "index_wrong_shard", [](const Ctx& c) {
      json idx = json::parse(slurp(c.lm30() + "/model.safetensors.index.json"));
      idx["weight_map"]["lm_head.weight"] = shard_name(1);
      return gen_hf(hf_dir(c, "m", {{"model.safetensors.index.json", idx.dump()}}));
    }, ERR, one({"lm_head.weight"}));
    add("loader", "index_weight_map_not_object", [](const Ctx& c) {
      json idx = json::parse(slurp(c.lm30() + "/model.safetensors.index.json"));
      idx["weight_map"] = json::array();
      return gen_hf(hf_dir(c, "m", {{"model.safetensors.index.json", idx.dump()}}));
    }, ERR, one({"model.safetensors.index.json"}));
  }

  // ===== loaders: config.json relabelled / malformed
  auto cfg_case = [&](const std::string& name, std::function<void(json&)> edit, Want want,
                      std::vector<std::vector<std::string>> needles) {
    add("config", name, [edit](const Ctx& c) {
      json cfg = lm30_config(c);
      edit(cfg);
      return gen_hf(hf_dir(c, "m", {{"config.json", cfg.dump(2)}}));
    }, want, std::move(needles));
  };
  cfg_case("model_type_gpt2", [](json& j) { j["model_type"] = "gpt2"; }, ERR, one({"model_type"}));
  cfg_case("model_type_empty", [](json& j) { j["model_type"] = ""; }, ERR, one({"model_type"}));
  cfg_case("model_type_number", [](json& j) { j["model_type"] = 5; }, ERR, one({"model_type"}));
  cfg_case("model_type_missing", [](json& j) { j.erase("model_type"); }, ERR, one({"model_type"}));
  cfg_case("model_type_qwen3_no_qk_norm", [](json& j) { j["model_type"] = "qwen3"; j.erase("architectures"); }, ERR, one({"q_norm", "k_norm"}));
  cfg_case("model_type_qwen2_no_bias", [](json& j) { j["model_type"] = "qwen2"; j.erase("architectures"); }, ERR, one({"bias"}));
  cfg_case("model_type_mixtral_no_experts", [](json& j) { j["model_type"] = "mixtral"; j.erase("architectures"); }, ERR,
           one({"experts", "block_sparse_moe", "num_local_experts"}));
  cfg_case("model_type_qwen3_moe_no_experts", [](json& j) { j["model_type"] = "qwen3_moe"; j.erase("architectures"); }, ERR, one({"experts", "mlp", "num_experts"}));
  cfg_case("architectures_other_family", [](json& j) { j["architectures"] = {"Qwen2ForCausalLM"}; }, ERR,
           one({"architectures[0]", "model_type"}));
  cfg_case("model_type_mistral_accepted", [](json& j) { j["model_type"] = "mistral"; j.erase("architectures"); }, OK, {});
  for (int L : {1, 4, 7})
    cfg_case("num_hidden_layers_" + std::to_string(L) + "_leftover_layers", [L](json& j) { j["num_hidden_layers"] = L; }, ERR,
             one({"model.layers." + std::to_string(L) + "."}));
  cfg_case("num_hidden_layers_9_missing_layer", [](json& j) { j["num_hidden_layers"] = 9; }, ERR, one({"model.layers.8."}));
  const std::vector<std::pair<std::string, json>> bad_ints = {
      {"zero", 0}, {"minus1", -1}, {"string", "8"}, {"fraction", 8.5}, {"huge", 1e30}, {"null", nullptr}};
  for (const std::string field : {"num_hidden_layers", "vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                  "intermediate_size", "head_dim"})
    for (const auto& [vn, val] : bad_ints) {
      if (field == "head_dim" && vn == "null") continue;  // null head_dim: derived from hidden/heads (documented)
      cfg_case(field + "_" + vn, [field, val = val](json& j) { j[field] = val; }, ERR,
               vn == "null" ? one({field, "model.layers.0."}) : one({field}));  // null: the HF default, then a shape mismatch
    }
  cfg_case("vocab_size_4095", [](json& j) { j["vocab_size"] = 4095; }, ERR, one({"embed_tokens", "vocab_size"}));
  cfg_case("vocab_size_8192_tokenizer_smaller", [](json& j) { j["vocab_size"] = 8192; }, ERR, one({"embed_tokens", "vocab_size"}));
  cfg_case("head_dim_32", [](json& j) { j["head_dim"] = 32; }, ERR, one({"q_proj", "head_dim"}));
  cfg_case("head_dim_63_odd", [](json& j) { j["head_dim"] = 63; }, ERR, one({"head_dim", "q_proj"}));
  cfg_case("head_dim_128", [](json& j) { j["head_dim"] = 128; }, ERR, one({"q_proj", "head_dim"}));
  cfg_case("head_dim_null_derived", [](json& j) { j["head_dim"] = nullptr; }, OK, {});
  cfg_case("num_attention_heads_7", [](json& j) { j["num_attention_heads"] = 7; }, ERR, one({"num_attention_heads", "head", "q_proj"}));
  cfg_case("num_attention_heads_16", [](json& j) { j["num_attention_heads"] = 16; }, ERR, one({"q_proj", "num_attention_heads"}));
  cfg_case("num_key_value_heads_3", [](json& j) { j["num_key_value_heads"] = 3; }, ERR, one({"num_key_value_heads", "k_proj"}));
  cfg_case("num_key_value_heads_8", [](json& j) { j["num_key_value_heads"] = 8; }, ERR, one({"k_proj", "num_key_value_heads"}));
  cfg_case("hidden_size_511", [](json& j) { j["hidden_size"] = 511; }, ERR, one({"hidden_size", "embed_tokens"}));
  cfg_case("intermediate_size_1535", [](json& j) { j["intermediate_size"] = 1535; }, ERR, one({"intermediate_size", "gate_proj", "up_proj"}));
  cfg_case("max_position_embeddings_minus1", [](json& j) { j["max_position_embeddings"] = -1; }, ERR, one({"max_position_embeddings"}));
  cfg_case("rms_norm_eps_string", [](json& j) { j["rms_norm_eps"] = "tiny"; }, ERR, one({"rms_norm_eps"}));
  cfg_case("rope_theta_negative", [](json& j) { j["rope_theta"] = -1.0; j["rope_parameters"]["rope_theta"] = -1.0; }, ERR, one({"rope_theta"}));
  cfg_case("tie_word_embeddings_leftover_lm_head", [](json& j) { j["tie_word_embeddings"] = true; }, ERR, one({"lm_head.weight"}));
  cfg_case("unknown_key_accepted", [](json& j) { j["some_future_field"] = {1, 2, 3}; }, OK, {});
  cfg_case("torch_dtype_float32_accepted", [](json& j) { j["torch_dtype"] = "float32"; }, OK, {});
  for (int k = 1; k <= 8; ++k)
    add("config", "truncated_" + std::to_string(k) + "_of_9", [k](const Ctx& c) {
      const std::string b = slurp(c.lm30() + "/config.json");
      return gen_hf(hf_dir(c, "m", {{"config.json", b.substr(0, b.size() * k / 9)}}));
    }, ERR, one({"config.json"}));
  add("config", "empty", [](const Ctx& c) { return gen_hf(hf_dir(c, "m", {{"config.json", ""}})); }, ERR, one({"config.json"}));
  add("config", "top_level_array", [](const Ctx& c) { return gen_hf(hf_dir(c, "m", {{"config.json", "[1,2]"}})); }, ERR, one({"config.json"}));
  add("config", "nul_bytes", [](const Ctx& c) { return gen_hf(hf_dir(c, "m", {{"config.json", std::string(64, '\0')}})); }, ERR,
      one({"config.json"}));
  add("config", "is_a_directory", [](const Ctx& c) {
    const std::string d = hf_dir(c, "m", {}, {"config.json"});
    fs::create_directory(fs::path(d) / "config.json");
    return gen_hf(d);
  }, ERR, one({"config.json"}));
  add("config", "missing", [](const Ctx& c) { return gen_hf(hf_dir(c, "m", {}, {"config.json"})); }, ERR, one({"config.json"}));

  // ===== consistency: tensors the config does not use; NaN/Inf in HF weights
  add("consistency", "llama_with_leftover_qkv_bias", [](const Ctx& c) {
    return gen_hf(hf_with_extra(c, "m", {{"model.layers.0.self_attn.q_proj.bias", {512}}, {"model.layers.0.self_attn.k_proj.bias", {256}},
                                         {"model.layers.0.self_attn.v_proj.bias", {256}}}));
  }, ERR, one({"q_proj.bias", "k_proj.bias", "v_proj.bias"}));
  add("consistency", "qwen2_with_qkv_bias_accepted", [](const Ctx& c) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> extra;
    for (int l = 0; l < 8; ++l)
      for (auto [p, n] : {std::pair<const char*, int64_t>{"q", 512}, {"k", 256}, {"v", 256}})
        extra.push_back({"model.layers." + std::to_string(l) + ".self_attn." + p + "_proj.bias", {n}});
    json cfg = lm30_config(c);
    cfg["model_type"] = "qwen2";
    cfg["architectures"] = {"Qwen2ForCausalLM"};
    return gen_hf(hf_with_extra(c, "m", extra, &cfg));
  }, OK);
  add("consistency", "unrelated_extra_tensor", [](const Ctx& c) {
    return gen_hf(hf_with_extra(c, "m", {{"model.foo.weight", {4, 4}}}));
  }, ERR, one({"model.foo.weight"}));
  add("consistency", "extra_layer_8", [](const Ctx& c) {
    return gen_hf(hf_with_extra(c, "m", {{"model.layers.8.mlp.up_proj.weight", {1536, 512}}}));
  }, ERR, one({"model.layers.8"}));
  {
    const std::vector<std::pair<std::string, size_t>> tensors = {
        {"model.embed_tokens.weight", 12345}, {"model.layers.0.self_attn.q_proj.weight", 7},
        {"model.layers.5.mlp.down_proj.weight", 100}, {"model.norm.weight", 3}, {"lm_head.weight", 4096 * 512 - 1}};
    for (const auto& [t, elem] : tensors) {
      std::string shortname = t;
      std::replace(shortname.begin(), shortname.end(), '.', '_');
      for (auto [vn, bits] : {std::pair<const char*, uint16_t>{"nan", 0x7fc0}, {"inf", 0x7f80}})
        add("consistency", std::string("hf_") + vn + "_in_" + shortname, [t = t, elem = elem, bits = bits](const Ctx& c) {
          return gen_hf(hf_with_value(c, "m", t, elem, bits));
        }, ERR, one({t}));
    }
    add("consistency", "hf_neg_inf_in_v_proj", [](const Ctx& c) {
      return gen_hf(hf_with_value(c, "m", "model.layers.2.self_attn.v_proj.weight", 0, 0xff80));
    }, ERR, one({"model.layers.2.self_attn.v_proj.weight"}));
    add("consistency", "hf_nan_in_ppl", [](const Ctx& c) {
      return Args{"ppl", hf_with_value(c, "m", "model.layers.1.mlp.up_proj.weight", 9, 0x7fc0), "--data",
                  c.S + "/data/tinystories/sample.txt", "--ctx", "16", "--max-windows", "1", "--schemes", "fp32", "-q"};
    }, ERR, one({"model.layers.1.mlp.up_proj.weight"}));
    add("consistency", "hf_nan_allowed_generate", [](const Ctx& c) {
      Args a = gen_hf(hf_with_value(c, "m", "model.layers.5.mlp.down_proj.weight", 100, 0x7fc0));
      a.push_back("--allow-nonfinite");
      return a;
    }, EITHER, one({"not finite", "non-finite"}));
    add("consistency", "hf_nan_allowed_ppl", [](const Ctx& c) {
      return Args{"ppl", hf_with_value(c, "m", "model.layers.1.mlp.up_proj.weight", 9, 0x7fc0), "--data",
                  c.S + "/data/tinystories/sample.txt", "--ctx", "16", "--max-windows", "1", "--schemes", "fp32", "-q",
                  "--allow-nonfinite"};
    }, EITHER, one({"not finite", "non-finite"}));
  }

  // ===== tokenizers
  add("tokenizer", "tok512_control", [](const Ctx& c) { return gen260(c.s260(), c.tok512()); }, OK);
  {
    for (int e : {0, 1, 2, 3, 10, 50, 100, 200, 255, 256, 300, 400, 500, 510, 511})
      add("tokenizer", "tok512_trunc_entry_boundary_" + std::to_string(e), [e](const Ctx& c) {
        const std::string b = slurp(c.tok512());
        spit(c.dir / "tok_trunc.bin", b.substr(0, tok_entries(b)[e]));
        return gen260(c.s260(), c.path("tok_trunc.bin"));
      }, ERR, one({"tok_trunc.bin"}));
    for (int e : {0, 1, 100, 511})
      for (int d : {2, 5, 8})
        add("tokenizer", "tok512_trunc_entry_" + std::to_string(e) + "_plus_" + std::to_string(d), [e, d](const Ctx& c) {
          const std::string b = slurp(c.tok512());
          spit(c.dir / "tok_trunc.bin", b.substr(0, tok_entries(b)[e] + d));
          return gen260(c.s260(), c.path("tok_trunc.bin"));
        }, ERR, one({"tok_trunc.bin"}));
    for (size_t off : {0, 1, 2, 3})
      add("tokenizer", "tok512_trunc_at_" + std::to_string(off), [off](const Ctx& c) {
        spit(c.dir / "tok_trunc.bin", slurp(c.tok512()).substr(0, off));
        return gen260(c.s260(), c.path("tok_trunc.bin"));
      }, ERR, one({"tok_trunc.bin"}));
    for (int k = 1; k <= 9; ++k)
      add("tokenizer", "tok512_trunc_frac_" + std::to_string(k) + "_of_10", [k](const Ctx& c) {
        const std::string b = slurp(c.tok512());
        spit(c.dir / "tok_trunc.bin", b.substr(0, b.size() * k / 10 + 1));
        return gen260(c.s260(), c.path("tok_trunc.bin"));
      }, ERR, one({"tok_trunc.bin"}));
    auto tok_edit = [&](const std::string& name, std::function<void(std::string&)> f) {
      add("tokenizer", "tok512_" + name, [f](const Ctx& c) {
        std::string b = slurp(c.tok512());
        f(b);
        spit(c.dir / "tok_bad.bin", b);
        return gen260(c.s260(), c.path("tok_bad.bin"));
      }, ERR, one({"tok_bad.bin"}));
    };
    tok_edit("max_len_negative", [](std::string& b) { put_u32(b, 0, 0xffffffffu); });
    add("tokenizer", "tok512_max_len_huge", [](const Ctx& c) {  // an informational field: accepted, memory bounded
      std::string b = slurp(c.tok512());
      put_u32(b, 0, 0x7fffffffu);
      spit(c.dir / "tok_bad.bin", b);
      return gen260(c.s260(), c.path("tok_bad.bin"));
    }, EITHER, one({"tok_bad.bin"}));
    tok_edit("entry0_len_negative", [](std::string& b) { put_u32(b, tok_entries(b)[0] + 4, 0xfffffff0u); });
    tok_edit("entry0_len_huge", [](std::string& b) { put_u32(b, tok_entries(b)[0] + 4, 0x7fffffffu); });
    tok_edit("entry300_len_past_end", [](std::string& b) { put_u32(b, tok_entries(b)[300] + 4, 100000u); });
    tok_edit("entry511_len_past_end", [](std::string& b) { put_u32(b, tok_entries(b)[511] + 4, 1000u); });
    tok_edit("entry5_len_longer_than_max", [](std::string& b) {
      const size_t e = tok_entries(b)[5];
      put_u32(b, e + 4, get_u32(b, e + 4) + 2);  // shifts every later entry: garbage lengths follow
    });
  }
  add("tokenizer", "model_512_with_sentencepiece_4096", [](const Ctx& c) { return gen260(c.s260(), c.lm30() + "/tokenizer.model"); }, ERR,
      {{"4096"}, {"512"}});
  add("tokenizer", "model_512_with_qwen3_json", [](const Ctx& c) {
    Args a = gen260(c.s260(), c.qwen3_json());
    a.insert(a.end(), {"-p", "Once"});
    return a;
  }, ERR,
      {{"1516"}, {"512"}});
  add("tokenizer", "model_4096_with_qwen3_json", [](const Ctx& c) {
    return Args{"generate", c.lm30(), "--tokenizer", c.qwen3_json(), "-n", "4", "-p", "Once"};
  }, ERR, {{"1516"}, {"4096"}});
  add("tokenizer", "model_4096_with_tok512", [](const Ctx& c) {
    return Args{"generate", c.lm30(), "--tokenizer", c.tok512(), "-n", "4"};
  }, EITHER, one({"tok512.bin"}));  // a smaller vocabulary fits the model
  add("tokenizer", "hf_without_tokenizer", [](const Ctx& c) { return gen_hf(hf_dir(c, "m", {}, {"tokenizer.model"})); }, ERR,
      one({"tokenizer"}));
  for (int k : {0, 1, 2, 3, 5, 8})
    add("tokenizer", "sentencepiece_trunc_" + std::to_string(k) + "_of_9", [k](const Ctx& c) {
      const std::string b = slurp(c.lm30() + "/tokenizer.model");
      return gen_hf(hf_dir(c, "m", {{"tokenizer.model", b.substr(0, b.size() * k / 9)}}));
    }, ERR, one({"tokenizer.model"}));
  add("tokenizer", "sentencepiece_garbage", [](const Ctx& c) {
    std::string b = slurp(c.lm30() + "/tokenizer.model");
    for (size_t i = 0; i < b.size(); i += 7) b[i] = static_cast<char>(0xff);
    return gen_hf(hf_dir(c, "m", {{"tokenizer.model", b}}));
  }, ERR, one({"tokenizer.model"}));
  add("tokenizer", "extension_unknown", [](const Ctx& c) {
    spit(c.dir / "tok.txt", slurp(c.tok512()));
    return gen260(c.s260(), c.path("tok.txt"));
  }, EITHER, one({"tok.txt"}));
  add("tokenizer", "tokenizer_is_directory", [](const Ctx& c) {
    fs::create_directory(c.dir / "tokdir.json");
    return gen260(c.s260(), c.path("tokdir.json"));
  }, ERR, one({"tokdir.json"}));
  // tokenizer.json: a small valid byte-level BPE, then its mutations
  add("tokenizer", "json_small_control", [](const Ctx& c) { return gen260_json(c, "small.json", small_bpe(c).dump()); }, OK);
  auto json_case = [&](const std::string& name, std::function<void(json&)> edit, std::vector<std::vector<std::string>> needles) {
    add("tokenizer", "json_" + name, [edit](const Ctx& c) {
      json j = small_bpe(c);
      edit(j);
      return gen260_json(c, "bad_tok.json", j.dump());
    }, ERR, std::move(needles));
  };
  const auto badtok = one({"bad_tok.json"});
  json_case("vocab_id_int32_max", [](json& j) { j["model"]["vocab"]["zz"] = 2147483647; }, {{"bad_tok.json"}, {"2147483647", "zz"}});
  json_case("vocab_id_uint32_max", [](json& j) { j["model"]["vocab"]["zz"] = 4294967295u; }, badtok);
  json_case("vocab_id_negative", [](json& j) { j["model"]["vocab"]["zz"] = -1; }, badtok);
  json_case("vocab_id_float", [](json& j) { j["model"]["vocab"]["zz"] = 3.5; }, badtok);
  json_case("vocab_id_1e300", [](json& j) { j["model"]["vocab"]["zz"] = 1e300; }, badtok);
  json_case("vocab_id_100000_past_model", [](json& j) { j["model"]["vocab"]["zz"] = 100000; }, {{"bad_tok.json"}, {"100000", "zz"}});
  json_case("added_token_id_huge", [](json& j) { j["added_tokens"][0]["id"] = 2000000000; }, badtok);
  json_case("added_token_id_negative", [](json& j) { j["added_tokens"][0]["id"] = -7; }, badtok);
  json_case("added_tokens_not_array", [](json& j) { j["added_tokens"] = "x"; }, badtok);
  json_case("vocab_array", [](json& j) { j["model"]["vocab"] = json::array({"a", "b"}); }, {{"bad_tok.json"}, {"vocab"}});
  json_case("vocab_missing", [](json& j) { j["model"].erase("vocab"); }, {{"bad_tok.json"}, {"vocab"}});
  json_case("merges_missing", [](json& j) { j["model"].erase("merges"); }, {{"bad_tok.json"}, {"merges"}});
  json_case("merge_unknown_token", [](json& j) { j["model"]["merges"].push_back("q @@"); }, {{"bad_tok.json"}, {"merge"}});
  json_case("merge_three_parts", [](json& j) { j["model"]["merges"].push_back("a b c"); }, {{"bad_tok.json"}, {"merge"}});
  json_case("merge_number", [](json& j) { j["model"]["merges"].push_back(7); }, {{"bad_tok.json"}, {"merge"}});
  json_case("model_type_wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, {{"bad_tok.json"}, {"WordPiece"}});
  json_case("model_missing", [](json& j) { j.erase("model"); }, {{"bad_tok.json"}, {"model"}});
  json_case("pre_tokenizer_unknown", [](json& j) { j["pre_tokenizer"] = {{"type", "NoSuchSplitter"}}; }, {{"bad_tok.json"}, {"NoSuchSplitter", "pre_tokenizer"}});
  json_case("top_level_array", [](json& j) { j = json::array({1}); }, badtok);
  for (int k : {1, 2, 3, 5, 7, 9})
    add("tokenizer", "json_truncated_" + std::to_string(k) + "_of_10", [k](const Ctx& c) {
      const std::string s = small_bpe(c).dump();
      return gen260_json(c, "bad_tok.json", s.substr(0, s.size() * k / 10));
    }, ERR, one({"bad_tok.json"}));
  add("tokenizer", "json_empty", [](const Ctx& c) { return gen260_json(c, "bad_tok.json", ""); }, ERR, one({"bad_tok.json"}));
  add("tokenizer", "json_invalid_utf8_token", [](const Ctx& c) {
    std::string s = small_bpe(c).dump();
    s = replace_once(s, "\"th\":256", "\"t\xff\":256");
    return gen260_json(c, "bad_tok.json", s);
  }, EITHER, one({"bad_tok.json"}));
  add("tokenizer", "json_qwen3_huge_vocab_id", [](const Ctx& c) {
    std::string s = slurp(c.qwen3_json());
    // the first vocab entry after "vocab": gets a 2^31 - 1 id
    const size_t v = s.find("\"vocab\"");
    const size_t colon = s.find(':', s.find('"', s.find('{', v) + 1) + 1);
    size_t end = colon + 1;
    while (end < s.size() && (s[end] == ' ' || std::isdigit(static_cast<unsigned char>(s[end])))) ++end;
    s.replace(colon + 1, end - colon - 1, " 2147483647");
    return gen260_json(c, "qwen3_huge_id.json", s);
  }, ERR, one({"qwen3_huge_id.json"}));

  // ===== data files (ppl, analyze)
  const std::string sample = "/data/tinystories/sample.txt";
  add("data", "ppl_control_sample", [sample](const Ctx& c) { return ppl260(c, c.S + sample); }, OK);
  add("data", "ppl_control_wikitext", [](const Ctx& c) { return ppl260(c, c.S + "/data/wikitext2/wiki.test.txt"); }, OK);
  add("data", "analyze_control", [sample](const Ctx& c) { return analyze260(c, c.S + sample); }, OK);
  using DataMaker = std::function<std::string(const Ctx&)>;  // returns the --data path
  const std::vector<std::tuple<std::string, DataMaker, Want, std::vector<std::vector<std::string>>>> data_cases = {
      {"dev_zero", [](const Ctx&) { return std::string("/dev/zero"); }, ERR, one({"/dev/zero"})},
      {"dev_null", [](const Ctx&) { return std::string("/dev/null"); }, ERR, one({"/dev/null"})},
      {"fifo", [](const Ctx& c) { mkfifo(c.path("data.fifo").c_str(), 0600); return c.path("data.fifo"); }, ERR, one({"data.fifo"})},
      {"directory", [](const Ctx& c) { fs::create_directory(c.dir / "datadir"); return c.path("datadir"); }, ERR, one({"datadir"})},
      {"missing", [](const Ctx& c) { return c.path("no_such_data.txt"); }, ERR, one({"no_such_data.txt"})},
      {"empty", [](const Ctx& c) { spit(c.dir / "empty.txt", ""); return c.path("empty.txt"); }, ERR, one({"empty.txt"})},
      {"one_byte", [](const Ctx& c) { spit(c.dir / "one.txt", "a"); return c.path("one.txt"); }, ERR, one({"one.txt"})},
      {"nul_in_middle", [sample](const Ctx& c) {
         std::string s = slurp(c.S + sample);
         s[s.size() / 2] = '\0';
         spit(c.dir / "nul.txt", s);
         return c.path("nul.txt"); }, EITHER, one({"nul.txt"})},
      {"nul_first", [sample](const Ctx& c) { spit(c.dir / "nul0.txt", std::string(1, '\0') + slurp(c.S + sample)); return c.path("nul0.txt"); },
       EITHER, one({"nul0.txt"})},
      {"all_nul", [](const Ctx& c) { spit(c.dir / "allnul.txt", std::string(4096, '\0')); return c.path("allnul.txt"); }, EITHER,
       one({"allnul.txt"})},
      {"invalid_utf8", [sample](const Ctx& c) {
         std::string s = slurp(c.S + sample);
         for (size_t i = 10; i < s.size(); i += 97) s[i] = static_cast<char>(0xff);
         spit(c.dir / "bad_utf8.txt", s);
         return c.path("bad_utf8.txt"); }, EITHER, one({"bad_utf8.txt"})},
      {"whitespace_only", [](const Ctx& c) { spit(c.dir / "ws.txt", std::string(500, ' ') + "\n\n\t"); return c.path("ws.txt"); }, EITHER,
       one({"ws.txt"})},
  };
  for (const auto& [name, make, want, needles] : data_cases) {
    add("data", "ppl_" + name, [make = make](const Ctx& c) { return ppl260(c, make(c)); }, want, needles);
    add("data", "analyze_" + name, [make = make](const Ctx& c) { return analyze260(c, make(c)); }, want, needles);
  }
  add("data", "ppl_hf_dev_zero", [](const Ctx& c) {
    return Args{"ppl", c.lm30(), "--data", "/dev/zero", "--ctx", "16", "--max-windows", "1", "--schemes", "fp32", "-q"};
  }, ERR, one({"/dev/zero"}));
  add("data", "ppl_hf_nul_in_middle", [sample](const Ctx& c) {
    std::string s = slurp(c.S + sample);
    s[s.size() / 3] = '\0';
    spit(c.dir / "nul.txt", s);
    return Args{"ppl", c.lm30(), "--data", c.path("nul.txt"), "--ctx", "16", "--max-windows", "1", "--schemes", "fp32", "-q"};
  }, EITHER, one({"nul.txt"}));
  add("data", "analyze_svg_into_missing_dir", [sample](const Ctx& c) {
    Args a = analyze260(c, c.S + sample);
    a.insert(a.end(), {"--svg", c.path("no/such/dir/plot.svg")});
    return a;
  }, ERR, one({"plot.svg"}));

  // ===== zero-shot files (eval)
  for (const std::string& t : kTasks)
    add("zeroshot", "control_" + t, [t](const Ctx& c) { return eval260(c, zs_dir(c, t, join_lines(first_lines(c, t, 3))), t); }, OK);
  for (const std::string& t : kTasks) {
    add("zeroshot", "empty_" + t, [t](const Ctx& c) { return eval260(c, zs_dir(c, t, ""), t); }, ERR, one({t + ".jsonl"}));
    add("zeroshot", "truncated_line_" + t, [t](const Ctx& c) {
      auto lines = first_lines(c, t, 3);
      lines[1] = lines[1].substr(0, lines[1].size() / 2);
      return eval260(c, zs_dir(c, t, join_lines(lines)), t);
    }, ERR, {{t + ".jsonl"}, {":2"}});
  }
  for (const std::string t : {"piqa", "winogrande", "lambada_openai"}) {
    add("zeroshot", "blank_" + t, [t = std::string(t)](const Ctx& c) { return eval260(c, zs_dir(c, t, "\n\n   \n\t\n"), t); }, ERR,
        one({t + ".jsonl"}));
    add("zeroshot", "blank_line_between_" + t, [t = std::string(t)](const Ctx& c) {
      auto lines = first_lines(c, t, 3);
      return eval260(c, zs_dir(c, t, lines[0] + "\n\n" + lines[1] + "\n"), t);
    }, OK);
    add("zeroshot", "array_line_" + t, [t = std::string(t)](const Ctx& c) { return eval260(c, zs_dir(c, t, "[1, 2, 3]\n"), t); }, ERR,
        one({t + ".jsonl"}));
    add("zeroshot", "trailing_garbage_" + t, [t = std::string(t)](const Ctx& c) {
      auto lines = first_lines(c, t, 1);
      return eval260(c, zs_dir(c, t, lines[0] + " }x\n"), t);
    }, ERR, one({t + ".jsonl"}));
    add("zeroshot", "nul_in_line_" + t, [t = std::string(t)](const Ctx& c) {
      auto lines = first_lines(c, t, 2);
      lines[0][lines[0].size() / 2] = '\0';
      return eval260(c, zs_dir(c, t, join_lines(lines)), t);
    }, ERR, one({t + ".jsonl"}));
  }
  for (const std::string t : {"arc_easy", "arc_challenge", "piqa", "copa", "openbook_qa", "siqa", "boolq"}) {
    add("zeroshot", "choices_string_" + t, [t = std::string(t)](const Ctx& c) {
      return eval260(c, zs_dir(c, t, zs_edit(c, t, [](json& j) { j["choices"] = "ab"; })), t);
    }, ERR, {{t + ".jsonl"}, {"choices"}});
    add("zeroshot", "gold_fraction_" + t, [t = std::string(t)](const Ctx& c) {
      return eval260(c, zs_dir(c, t, zs_edit(c, t, [](json& j) { j["gold"] = 0.7; })), t);
    }, ERR, {{t + ".jsonl"}, {"gold"}});
  }
  const std::vector<std::pair<std::string, json>> bad_gold = {{"minus1", -1}, {"99", 99}, {"string", "1"}, {"null", nullptr},
                                                              {"1e300", 1e300}, {"true", true}};
  for (const auto& [gn, gv] : bad_gold)
    add("zeroshot", "gold_" + gn + "_piqa", [gv = gv](const Ctx& c) {
      return eval260(c, zs_dir(c, "piqa", zs_edit(c, "piqa", [gv](json& j) { j["gold"] = gv; })), "piqa");
    }, ERR, {{"piqa.jsonl"}, {"gold"}});
  add("zeroshot", "gold_missing_piqa", [](const Ctx& c) {
    return eval260(c, zs_dir(c, "piqa", zs_edit(c, "piqa", [](json& j) { j.erase("gold"); })), "piqa");
  }, ERR, {{"piqa.jsonl"}, {"gold"}});
  add("zeroshot", "gold_fraction_winogrande", [](const Ctx& c) {
    return eval260(c, zs_dir(c, "winogrande", zs_edit(c, "winogrande", [](json& j) { j["gold"] = 0.7; })), "winogrande");
  }, ERR, {{"winogrande.jsonl"}, {"gold"}});
  const std::vector<std::tuple<std::string, std::string, std::function<void(json&)>, std::string>> field_edits = {
      {"query_missing", "piqa", [](json& j) { j.erase("query"); }, "query"},
      {"query_number", "arc_easy", [](json& j) { j["query"] = 5; }, "query"},
      {"choices_empty", "piqa", [](json& j) { j["choices"] = json::array(); }, "choices"},
      {"choices_numbers", "copa", [](json& j) { j["choices"] = {1, 2}; }, "choices"},
      {"choices_missing", "siqa", [](json& j) { j.erase("choices"); }, "choices"},
      {"context_options_string", "winogrande", [](json& j) { j["context_options"] = "ab"; }, "context_options"},
      {"continuation_missing_winogrande", "winogrande", [](json& j) { j.erase("continuation"); }, "continuation"},
      {"context_missing_lambada", "lambada_openai", [](json& j) { j.erase("context"); }, "context"},
      {"continuation_empty_lambada", "lambada_openai", [](json& j) { j["continuation"] = ""; }, "continuation"},
      {"continuation_number_lambada", "lambada_openai", [](json& j) { j["continuation"] = 3; }, "continuation"},
  };
  for (const auto& [name, task, edit, field] : field_edits)
    add("zeroshot", name, [task = task, edit = edit](const Ctx& c) { return eval260(c, zs_dir(c, task, zs_edit(c, task, edit)), task); },
        ERR, {{task + ".jsonl"}, {field}});
  auto eval_flags = [&](const std::string& name, Args extra, Want want, std::vector<std::vector<std::string>> needles) {
    add("zeroshot", name, [extra](const Ctx& c) {
      Args a = eval260(c, zs_dir(c, "piqa", join_lines(first_lines(c, "piqa", 3))), "piqa");
      for (size_t i = 0; i + 1 < extra.size(); i += 2) {
        auto it = std::find(a.begin(), a.end(), extra[i]);
        if (it != a.end()) *(it + 1) = extra[i + 1];
        else a.insert(a.end(), {extra[i], extra[i + 1]});
      }
      return a;
    }, want, std::move(needles));
  };
  eval_flags("limit_minus1", {"--limit", "-1"}, ERR, one({"--limit"}));
  eval_flags("limit_abc", {"--limit", "abc"}, ERR, one({"--limit"}));
  eval_flags("limit_1_accepted", {"--limit", "1"}, OK, {});
  eval_flags("tasks_empty", {"--tasks", ""}, ERR, one({"--tasks"}));
  eval_flags("tasks_comma", {"--tasks", ","}, ERR, one({"--tasks"}));
  eval_flags("tasks_unknown", {"--tasks", "nosuchtask"}, ERR, one({"nosuchtask"}));
  eval_flags("tasks_path_traversal", {"--tasks", "../piqa"}, ERR, one({"../piqa"}));
  eval_flags("schemes_empty", {"--schemes", ""}, ERR, one({"--schemes", "scheme"}));
  eval_flags("data_dir_missing", {"--data-dir", "/nonexistent/zs"}, ERR, one({"/nonexistent/zs"}));
  add("zeroshot", "data_dir_is_file", [](const Ctx& c) {
    spit(c.dir / "afile", "x");
    return eval260(c, c.path("afile"), "piqa");
  }, ERR, one({"afile"}));
  add("zeroshot", "task_file_is_directory", [](const Ctx& c) {
    fs::create_directories(c.dir / "zs" / "piqa.jsonl");
    return eval260(c, c.path("zs"), "piqa");
  }, ERR, one({"piqa.jsonl"}));
  add("zeroshot", "task_file_is_fifo", [](const Ctx& c) {
    fs::create_directories(c.dir / "zs");
    mkfifo((c.dir / "zs" / "piqa.jsonl").c_str(), 0600);
    return eval260(c, c.path("zs"), "piqa");
  }, ERR, one({"piqa.jsonl"}));

  // ===== .npy (opcheck --x/--w)
  add("npy", "control", [](const Ctx& c) { return opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256))); }, OK);
  add("npy", "control_v2", [](const Ctx& c) { return opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256), 2)); }, OK);
  add("npy", "control_v3", [](const Ctx& c) { return opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256), 3)); }, OK);
  add("npy", "control_f2", [](const Ctx& c) {
    return opcheck_xw(c, "x.npy", npy("{'descr': '<f2', 'fortran_order': False, 'shape': (4, 64), }", std::string(512, '\x10')));
  }, OK);
  add("npy", "control_f8", [](const Ctx& c) {
    return opcheck_xw(c, "x.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 64), }", std::string(2048, '\0')));
  }, OK);
  add("npy", "control_bfloat16_v2", [](const Ctx& c) {
    return opcheck_xw(c, "x.npy", npy("{'descr': '<V2', 'fortran_order': False, 'shape': (4, 64), }", std::string(512, '\x3f')));
  }, OK);
  for (size_t off : {0, 1, 5, 6, 7, 8, 9, 10, 11, 40, 63, 64, 65, 100, 500, 1000, 1087})
    add("npy", "x_trunc_at_" + std::to_string(off), [off](const Ctx& c) {
      const std::string b = npy(dict_f4(kXGood), f32_data(256));
      return opcheck_xw(c, "x_trunc.npy", b.substr(0, std::min(off, b.size() - 1)));
    }, ERR, one({"x_trunc.npy"}));
  for (size_t off : {0, 8, 63, 64, 2000})
    add("npy", "w_trunc_at_" + std::to_string(off), [off](const Ctx& c) {
      Args a = opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256)));
      spit(c.dir / "w_trunc.npy", npy(dict_f4("(16, 64)"), f32_data(16 * 64)).substr(0, off));
      a[4] = c.path("w_trunc.npy");
      return a;
    }, ERR, one({"w_trunc.npy"}));
  auto npy_case = [&](const std::string& name, std::function<std::string()> bytes, Want want,
                      std::vector<std::vector<std::string>> needles) {
    add("npy", name, [bytes](const Ctx& c) { return opcheck_xw(c, "x_bad.npy", bytes()); }, want, std::move(needles));
  };
  auto with_field = [](const std::string& f) { return std::vector<std::vector<std::string>>{{"x_bad.npy"}, {f}}; };
  const auto xbad = one({"x_bad.npy"});
  npy_case("magic", [] { std::string b = npy(dict_f4(kXGood), f32_data(256)); b[1] = 'X'; return b; }, ERR, xbad);
  npy_case("version_9", [] { std::string b = npy(dict_f4(kXGood), f32_data(256)); b[6] = 9; return b; }, ERR, xbad);
  npy_case("header_len_huge", [] { std::string b = npy(dict_f4(kXGood), f32_data(256)); b[8] = b[9] = '\xff'; return b; }, ERR, xbad);
  npy_case("header_len_zero", [] { std::string b = npy(dict_f4(kXGood), f32_data(256)); b[8] = b[9] = 0; return b; }, ERR, xbad);
  npy_case("v2_header_len_4g", [] { std::string b = npy(dict_f4(kXGood), f32_data(256), 2); put_u32(b, 8, 0xffffffffu); return b; }, ERR, xbad);
  npy_case("header_list", [] { return npy("[1, 2]", f32_data(256)); }, ERR, xbad);
  npy_case("descr_i4", [] { return npy("{'descr': '<i4', 'fortran_order': False, 'shape': (4, 64), }", f32_data(256)); }, ERR, {{"x_bad.npy"}, {"descr", "dtype"}});
  npy_case("descr_big_endian", [] { return npy("{'descr': '>f4', 'fortran_order': False, 'shape': (4, 64), }", f32_data(256)); }, ERR, {{"x_bad.npy"}, {"descr", "dtype"}});
  npy_case("descr_f16_bytes", [] { return npy("{'descr': '<f16', 'fortran_order': False, 'shape': (4, 64), }", f32_data(1024)); }, ERR, {{"x_bad.npy"}, {"descr", "dtype"}});
  npy_case("descr_number", [] { return npy("{'descr': 4, 'fortran_order': False, 'shape': (4, 64), }", f32_data(256)); }, ERR, {{"x_bad.npy"}, {"descr", "dtype"}});
  npy_case("descr_missing", [] { return npy("{'fortran_order': False, 'shape': (4, 64), }", f32_data(256)); }, ERR, {{"x_bad.npy"}, {"descr", "dtype"}});
  npy_case("fortran_order_true", [] { return npy("{'descr': '<f4', 'fortran_order': True, 'shape': (4, 64), }", f32_data(256)); }, ERR,
           with_field("fortran_order"));
  npy_case("fortran_order_string", [] { return npy("{'descr': '<f4', 'fortran_order': 'False', 'shape': (4, 64), }", f32_data(256)); }, ERR,
           with_field("fortran_order"));
  npy_case("fortran_order_typo", [] { return npy("{'descr': '<f4', 'fortran_order': Tru, 'shape': (4, 64), }", f32_data(256)); }, ERR,
           with_field("fortran_order"));
  npy_case("shape_missing", [] { return npy("{'descr': '<f4', 'fortran_order': False, }", f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_double_comma", [] { return npy(dict_f4("(4,, 64)"), f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_no_comma", [] { return npy(dict_f4("(4 64)"), f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_negative", [] { return npy(dict_f4("(-4, 64)"), f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_fraction", [] { return npy(dict_f4("(4.5, 64)"), f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_20_digits", [] { return npy(dict_f4("(99999999999999999999, 64)"), f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_product_overflow", [] { return npy(dict_f4("(4294967296, 4294967296)"), f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_unterminated", [] { return npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 64", f32_data(256)); }, ERR,
           xbad);
  npy_case("shape_string", [] { return npy(dict_f4("'4, 64'"), f32_data(256)); }, ERR, with_field("shape"));
  npy_case("shape_3d", [] { return npy(dict_f4("(4, 64, 1)"), f32_data(256)); }, ERR, {{"x_bad.npy"}, {"shape", "2-D"}});
  npy_case("shape_scalar", [] { return npy(dict_f4("()"), f32_data(1)); }, ERR, {{"x_bad.npy"}, {"shape", "2-D"}});
  npy_case("descr_unterminated", [] { return npy("{'descr': '<f4, 'fortran_order': False, 'shape': (4, 64), }", f32_data(256)); }, ERR, xbad);
  npy_case("dict_unterminated", [] { return npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 64), ", f32_data(256)); }, ERR, xbad);
  npy_case("keys_unquoted", [] { return npy("{descr: '<f4', fortran_order: False, shape: (4, 64), }", f32_data(256)); }, ERR, xbad);
  npy_case("junk_after_dict", [] { return npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 64), } junk", f32_data(256)); }, ERR, xbad);
  npy_case("data_short", [] { return npy(dict_f4(kXGood), f32_data(255)); }, ERR, xbad);
  npy_case("data_for_8_rows", [] { return npy(dict_f4("(8, 64)"), f32_data(256)); }, ERR, xbad);
  npy_case("descr_only_inside_value", [] { return npy("{'note': \"'descr': '<f4'\", 'fortran_order': False, 'shape': (4, 64), }", f32_data(256)); },
           ERR, {{"x_bad.npy"}, {"descr", "dtype"}});
  npy_case("shape_only_inside_value", [] { return npy("{'descr': '<f4', 'note': \"'shape': (4, 64)\", 'fortran_order': False, }", f32_data(256)); },
           ERR, with_field("shape"));
  npy_case("descr_inside_value_then_real", [] {
    return npy("{'note': \"'descr': '<f8'\", 'descr': '<f4', 'fortran_order': False, 'shape': (4, 64), }", f32_data(256));
  }, EITHER, xbad);  // a key numpy never writes may be refused, but then by name
  npy_case("shape_inside_value_then_real", [] {
    return npy("{'descr': '<f4', 'note': \"'shape': (1, 64)\", 'fortran_order': False, 'shape': (4, 64), }", f32_data(256));
  }, EITHER, xbad);
  npy_case("duplicate_descr_last_wins", [] {
    return npy("{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (4, 64), }", f32_data(256));
  }, OK, {});
  npy_case("duplicate_shape_last_wins", [] {
    return npy("{'descr': '<f4', 'shape': (2, 64), 'fortran_order': False, 'shape': (4, 64), }", f32_data(256));
  }, OK, {});
  npy_case("duplicate_fortran_order_last_wins", [] {
    return npy("{'descr': '<f4', 'fortran_order': True, 'fortran_order': False, 'shape': (4, 64), }", f32_data(256));
  }, OK, {});
  npy_case("shape_4_0", [] { return npy(dict_f4("(4, 0)"), ""); }, EITHER, one({"x_bad.npy", "X is"}));
  npy_case("shape_0_64", [] { return npy(dict_f4("(0, 64)"), ""); }, EITHER, one({"x_bad.npy", "X is"}));
  npy_case("nan_in_data", [] { std::string d = f32_data(256); put_f32(d, 40, std::nanf("")); return npy(dict_f4(kXGood), d); }, EITHER, xbad);
  add("npy", "k_mismatch", [](const Ctx& c) {
    Args a = opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256)));
    spit(c.dir / "w32.npy", npy(dict_f4("(16, 32)"), f32_data(512)));
    a[4] = c.path("w32.npy");
    return a;
  }, ERR, one({"w32.npy", "K", "shape"}));
  add("npy", "x_is_directory", [](const Ctx& c) {
    Args a = opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256)));
    fs::create_directory(c.dir / "xdir");
    a[2] = c.path("xdir");
    return a;
  }, ERR, {{"xdir"}, {"is a directory"}});
  add("npy", "w_is_directory", [](const Ctx& c) {
    Args a = opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256)));
    fs::create_directory(c.dir / "wdir");
    a[4] = c.path("wdir");
    return a;
  }, ERR, {{"wdir"}, {"is a directory"}});
  add("npy", "x_is_dev_zero", [](const Ctx& c) {
    Args a = opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256)));
    a[2] = "/dev/zero";
    return a;
  }, ERR, one({"/dev/zero"}));
  add("npy", "save_into_a_file", [](const Ctx& c) {
    Args a = opcheck_xw(c, "x.npy", npy(dict_f4(kXGood), f32_data(256)));
    spit(c.dir / "notadir", "x");
    a.insert(a.end(), {"--save", c.path("notadir")});
    return a;
  }, ERR, one({"notadir"}));

  // ===== flags
  auto flag = [&](const std::string& name, std::function<Args(const Ctx&)> args, Want want, std::vector<std::vector<std::string>> needles,
                  double mem_gib = kDefaultMemGiB) {
    add("flags", name, std::move(args), want, std::move(needles));
    v.back().mem_gib = mem_gib;
  };
  auto gen_with = [](Args extra) {
    return [extra](const Ctx& c) {
      Args a = {"generate", c.s260(), "--tokenizer", c.tok512()};
      a.insert(a.end(), extra.begin(), extra.end());
      return a;
    };
  };
  flag("generate_n_0", gen_with({"-n", "0"}), ERR, one({"-n", "--steps"}));
  flag("generate_n_minus1", gen_with({"-n", "-1"}), ERR, one({"-n", "--steps"}));
  flag("generate_n_abc", gen_with({"-n", "abc"}), ERR, one({"-n", "--steps"}));
  flag("generate_n_empty", gen_with({"-n", ""}), ERR, one({"-n", "--steps"}));
  flag("generate_n_1e100", gen_with({"-n", "1e100"}), ERR, one({"-n", "--steps"}));
  flag("generate_n_100000000_clamped", gen_with({"-n", "100000000"}), EITHER, one({"-n", "--steps"}));
  flag("generate_t_nan", gen_with({"-n", "4", "-t", "nan"}), ERR, one({"-t", "--temperature"}));
  flag("generate_t_inf", gen_with({"-n", "4", "-t", "inf"}), ERR, one({"-t", "--temperature"}));
  flag("generate_t_minus1", gen_with({"-n", "4", "-t", "-1"}), ERR, one({"-t", "--temperature"}));
  flag("generate_t_abc", gen_with({"-n", "4", "-t", "abc"}), ERR, one({"-t", "--temperature"}));
  flag("generate_t_1_sampled", gen_with({"-n", "4", "-t", "1", "--top-p", "0.9"}), OK, {});
  flag("generate_top_p_nan", gen_with({"-n", "4", "-t", "1", "--top-p", "nan"}), ERR, one({"--top-p"}));
  flag("generate_top_p_0", gen_with({"-n", "4", "-t", "1", "--top-p", "0"}), ERR, one({"--top-p"}));
  flag("generate_top_p_1p5", gen_with({"-n", "4", "-t", "1", "--top-p", "1.5"}), ERR, one({"--top-p"}));
  flag("generate_top_p_minus", gen_with({"-n", "4", "-t", "1", "--top-p", "-0.1"}), ERR, one({"--top-p"}));
  flag("generate_seed_abc", gen_with({"-n", "4", "--seed", "abc"}), ERR, one({"--seed"}));
  flag("generate_scheme_unknown", gen_with({"-n", "4", "--scheme", "nosuchscheme"}), ERR, one({"nosuchscheme"}));
  flag("generate_scheme_empty", gen_with({"-n", "4", "--scheme", ""}), ERR, one({"--scheme", "scheme"}));
  flag("generate_device_tpu", gen_with({"-n", "4", "--device", "tpu"}), ERR, one({"--device", "tpu"}));
  flag("generate_unknown_flag", gen_with({"-n", "4", "--frobnicate"}), ERR, one({"--frobnicate"}));
  flag("generate_missing_model", [](const Ctx&) { return Args{"generate"}; }, ERR, one({"model"}));
  flag("generate_model_missing_file", [](const Ctx& c) { return gen260(c.path("nosuch.bin"), c.tok512()); }, ERR, one({"nosuch.bin"}));
  flag("generate_model_empty_dir", [](const Ctx& c) {
    fs::create_directory(c.dir / "emptymodel");
    return gen_hf(c.path("emptymodel"));
  }, ERR, one({"emptymodel"}));
  flag("generate_model_dev_zero", [](const Ctx& c) { return gen260("/dev/zero", c.tok512()); }, ERR, one({"/dev/zero"}));
  flag("generate_tokenizer_missing", [](const Ctx& c) { return gen260(c.s260(), c.path("nosuch_tok.bin")); }, ERR, one({"nosuch_tok.bin"}));
  auto ppl_with = [](Args extra) {
    return [extra](const Ctx& c) {
      Args a = {"ppl", c.s260(), "--tokenizer", c.tok512(), "--data", c.S + "/data/tinystories/sample.txt", "--schemes", "fp32", "-q"};
      for (size_t i = 0; i + 1 < extra.size(); i += 2) {
        auto it = std::find(a.begin(), a.end(), extra[i]);
        if (it != a.end()) *(it + 1) = extra[i + 1];
        else a.insert(a.end(), {extra[i], extra[i + 1]});
      }
      return a;
    };
  };
  flag("ppl_max_windows_minus1", ppl_with({"--ctx", "16", "--max-windows", "-1"}), ERR, one({"--max-windows"}));
  flag("ppl_max_windows_abc", ppl_with({"--ctx", "16", "--max-windows", "abc"}), ERR, one({"--max-windows"}));
  flag("ppl_ctx_0", ppl_with({"--ctx", "0", "--max-windows", "1"}), ERR, one({"--ctx"}));
  flag("ppl_ctx_minus1", ppl_with({"--ctx", "-1", "--max-windows", "1"}), ERR, one({"--ctx"}));
  flag("ppl_ctx_abc", ppl_with({"--ctx", "abc", "--max-windows", "1"}), ERR, one({"--ctx"}));
  flag("ppl_ctx_1", ppl_with({"--ctx", "1", "--max-windows", "1"}), EITHER, one({"--ctx"}));
  flag("ppl_ctx_100000000", ppl_with({"--ctx", "100000000", "--max-windows", "1"}), ERR, one({"--ctx", "100000000"}));
  flag("ppl_schemes_empty", [](const Ctx& c) {
    Args a = ppl260(c, c.S + "/data/tinystories/sample.txt");
    *(std::find(a.begin(), a.end(), "--schemes") + 1) = "";
    return a;
  }, ERR, one({"--schemes", "scheme"}));
  flag("ppl_schemes_unknown", ppl_with({"--ctx", "16", "--max-windows", "1", "--schemes", "fp32,nosuch"}), ERR, one({"nosuch"}));
  flag("ppl_reference_unknown", ppl_with({"--ctx", "16", "--max-windows", "1", "--reference", "nosuchref"}), ERR, one({"nosuchref"}));
  flag("ppl_missing_data_flag", [](const Ctx& c) { return Args{"ppl", c.s260(), "--tokenizer", c.tok512()}; }, ERR, one({"--data"}));
  flag("ppl_data_is_directory", ppl_with({"--ctx", "16", "--max-windows", "1", "--data", "/"}), ERR, one({"is a directory", "'/'", " / "}));
  auto an_with = [](Args extra) {
    return [extra](const Ctx& c) {
      Args a = {"analyze", c.s260(), "--tokenizer", c.tok512(), "--data", c.S + "/data/tinystories/sample.txt", "--schemes", "fp32"};
      a.insert(a.end(), extra.begin(), extra.end());
      return a;
    };
  };
  flag("analyze_tokens_0", an_with({"--tokens", "0"}), ERR, one({"--tokens"}));
  flag("analyze_tokens_minus1", an_with({"--tokens", "-1"}), ERR, one({"--tokens"}));
  flag("analyze_tokens_abc", an_with({"--tokens", "abc"}), ERR, one({"--tokens"}));
  flag("analyze_tokens_100000000", an_with({"--tokens", "100000000"}), EITHER, one({"--tokens"}));
  auto op_with = [](Args extra) {
    return [extra](const Ctx&) {
      Args a = {"opcheck", "-M", "4", "-K", "64", "-N", "16", "--schemes", "fp32,nvfp4"};
      for (size_t i = 0; i + 1 < extra.size(); i += 2) {
        auto it = std::find(a.begin(), a.end(), extra[i]);
        if (it != a.end()) *(it + 1) = extra[i + 1];
        else a.insert(a.end(), {extra[i], extra[i + 1]});
      }
      return a;
    };
  };
  flag("opcheck_control", op_with({}), OK, {});
  flag("opcheck_M_0", op_with({"-M", "0"}), ERR, one({"-M", "--m"}));
  flag("opcheck_K_0", op_with({"-K", "0"}), ERR, one({"-K", "--k"}));
  flag("opcheck_N_0", op_with({"-N", "0"}), ERR, one({"-N", "--n"}));
  flag("opcheck_M_abc", op_with({"-M", "abc"}), ERR, one({"-M", "--m"}));
  flag("opcheck_K_minus3", op_with({"-K", "-3"}), ERR, one({"-K", "--k"}));
  flag("opcheck_N_1e9", op_with({"-N", "1e9"}), ERR, one({"-N", "--n"}));
  flag("opcheck_K_100000000", op_with({"-K", "100000000"}), ERR, one({"100000000"}));
  flag("opcheck_M_100000000", op_with({"-M", "100000000"}), ERR, one({"100000000"}));
  flag("opcheck_N_100000000", op_with({"-N", "100000000"}), ERR, one({"100000000"}));
  flag("opcheck_MKN_overflow", op_with({"-M", "9223372036854775807", "-K", "9223372036854775807"}), ERR, one({"-M", "-K", "--m", "--k"}));
  flag("opcheck_K_not_multiple_of_block", op_with({"-K", "63"}), EITHER, one({"-K", "63"}));
  flag("opcheck_schemes_empty", op_with({"--schemes", ""}), ERR, one({"--schemes", "scheme"}));
  flag("opcheck_reference_unknown", op_with({"--reference", "nosuchref"}), ERR, one({"nosuchref"}));
  flag("opcheck_seed_abc", op_with({"--seed", "abc"}), ERR, one({"--seed"}));
  flag("opcheck_x_directory", [](const Ctx& c) {
    fs::create_directory(c.dir / "xdir");
    return Args{"opcheck", "--x", c.path("xdir"), "--schemes", "fp32"};
  }, ERR, {{"xdir"}, {"is a directory"}});
  flag("opcheck_x_missing", [](const Ctx&) { return Args{"opcheck", "--x", "/nonexistent/x.npy"}; }, ERR, one({"/nonexistent/x.npy"}));
  flag("unknown_subcommand", [](const Ctx&) { return Args{"frobnicate"}; }, ERR, one({"frobnicate"}));
  flag("no_subcommand", [](const Ctx&) { return Args{}; }, ERR, one({"subcommand", "Usage", "usage"}));
  flag("bench_without_subcommand", [](const Ctx&) { return Args{"bench"}; }, ERR, one({"subcommand", "gemm"}));
  flag("version", [](const Ctx&) { return Args{"--version"}; }, OK, {});
  flag("schemes_listing", [](const Ctx&) { return Args{"schemes"}; }, OK, {});
  return v;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = build_cases();
  return all;
}

// ---- the test ----------------------------------------------------------------------------------

std::string quoted(const Args& a) {
  std::string s = "sharq";
  for (const auto& x : a) s += " '" + x + "'";
  return s;
}

class Corpus : public ::testing::TestWithParam<size_t> {};

TEST_P(Corpus, Run) {
  const Case& k = cases()[GetParam()];
  const std::string S = shared_dir();
  for (const char* need : {"/models/stories260K/stories260K.bin", "/models/sharq-lm-30m/config.json", "/data/zeroshot/piqa.jsonl",
                           "/tokenizers/qwen3/tokenizer.json"})
    if (!fs::exists(S + need)) GTEST_SKIP() << "no " << S << need << " (the corpus is built from ../shared)";

  // a folder of its own for this case
  std::string tmpl = (fs::temp_directory_path() / "sharq_bad_input_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const Ctx ctx{tmpl, S};
  struct Cleanup {
    std::string d;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } cleanup{tmpl};

  Args args;
  try {
    args = k.setup(ctx);
  } catch (const std::exception& e) {
    FAIL() << k.category << "/" << k.name << ": building the bad input failed: " << e.what();
  }
  const double bound_gib = k.mem_gib * kMemScale;
  const long bound_kb = static_cast<long>(bound_gib * 1024 * 1024);
  const RunResult r = run_cli(args, k.timeout_s, 2 * bound_kb);
  const std::string what = k.category + "/" + k.name + "\n  $ " + quoted(args) + "\n  output:\n" + r.out.substr(0, 4000);

  EXPECT_FALSE(r.timed_out) << "hung (killed after " << k.timeout_s << " s): " << what;
  EXPECT_FALSE(r.killed_for_memory) << "resident memory ran past " << 2 * bound_gib << " GiB (killed): " << what;
  EXPECT_EQ(r.signal, 0) << "crashed with signal " << r.signal << " (" << strsignal(r.signal) << "): " << what;
  EXPECT_EQ(r.out.find("Sanitizer"), std::string::npos) << "sanitizer report: " << what;
  EXPECT_EQ(r.out.find("runtime error:"), std::string::npos) << "UBSan report: " << what;
  EXPECT_LE(r.maxrss_kb, bound_kb) << "peak RSS " << r.maxrss_kb / 1024 << " MiB over the " << bound_gib << " GiB bound: " << what;
  if (r.timed_out || r.killed_for_memory || r.signal) return;

  const bool failed = r.exit_code != 0;
  if (k.want == Want::ok) {
    EXPECT_EQ(r.exit_code, 0) << "expected success: " << what;
  }
  if (k.want == Want::error) {
    EXPECT_NE(r.exit_code, 0) << "expected an error (non-zero exit): " << what;
  }
  if (failed && k.want != Want::ok)
    for (const auto& group : k.needles) {
      bool found = false;
      for (const auto& n : group) found = found || r.out.find(n) != std::string::npos;
      std::string alts;
      for (const auto& n : group) alts += (alts.empty() ? "'" : " or '") + n + "'";
      EXPECT_TRUE(found) << "the message does not name " << alts << ": " << what;
    }
}

std::string case_name(const ::testing::TestParamInfo<size_t>& info) {
  const Case& k = cases()[info.param];
  std::string n = k.category + "_" + k.name;
  for (char& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

INSTANTIATE_TEST_SUITE_P(BadInput, Corpus, ::testing::Range<size_t>(0, cases().size()), case_name);

// (4,0) and (0,64) are empty arrays of the same kind: the CLI treats both the same way.
TEST(BadInputNpy, EmptyShapesHandledConsistently) {
  if (!fs::exists(shared_dir() + "/models/stories260K/stories260K.bin")) GTEST_SKIP() << "no ../shared";
  std::string tmpl = (fs::temp_directory_path() / "sharq_bad_input_XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const Ctx c{tmpl, shared_dir()};
  const RunResult a = run_cli(opcheck_xw(c, "x40.npy", npy(dict_f4("(4, 0)"), "")), kDefaultTimeoutS, 1L << 22);
  spit(c.dir / "w0.npy", npy(dict_f4("(16, 0)"), ""));
  const RunResult b = run_cli(opcheck_xw(c, "x064.npy", npy(dict_f4("(0, 64)"), "")), kDefaultTimeoutS, 1L << 22);
  std::error_code ec;
  fs::remove_all(tmpl, ec);
  EXPECT_EQ(a.signal, 0) << a.out;
  EXPECT_EQ(b.signal, 0) << b.out;
  EXPECT_EQ(a.exit_code == 0, b.exit_code == 0) << "(4,0): exit " << a.exit_code << "\n" << a.out << "\n(0,64): exit " << b.exit_code << "\n"
                                                << b.out;
}

TEST(BadInputCorpus, HasAtLeast300Cases) { EXPECT_GE(cases().size(), 300u); }

}  // namespace
