// The CLI's contract: a clean run exits 0; bad input exits non-zero with a message that names
// the problem.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <fstream>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../support/run_command.h"
#include "sharq/io/npy.h"

namespace {

using Result = sharq_test::CommandResult;

// The CLI with `args`, stdout and stderr together.
Result run(const std::string& args, const std::string& env = "") {
  return sharq_test::run_command(env + (env.empty() ? "" : " ") + std::string(SHARQ_CLI_PATH) + " " + args + " 2>&1");
}

TEST(Cli, OpcheckPrintsTheErrorTable) {
  const Result r = run("opcheck -M 4 -K 128 -N 16 --schemes nvfp4,sharq");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("rel_err"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sharq"), std::string::npos) << r.out;
}

TEST(Cli, UnknownSchemeFailsWithItsName) {
  const Result r = run("opcheck -M 4 -K 64 -N 4 --schemes fp32,nosuch");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("unknown scheme 'nosuch'"), std::string::npos) << r.out;
}

TEST(Cli, MissingInputFileFailsWithThePath) {
  const Result r = run("opcheck --x /nonexistent/x.npy");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("/nonexistent/x.npy"), std::string::npos) << r.out;
}

TEST(Cli, BadOptionValueFails) {
  EXPECT_NE(run("opcheck -M -3").status, 0);
  EXPECT_NE(run("nosuchcommand").status, 0);
  EXPECT_NE(run("").status, 0);  // a subcommand is required
}

// Every numeric option goes through one checked parser: exit 1 and
// "sharq: error: --flag: <value> is not <what is expected>" (no 309-digit bound, no "At Most 1").
TEST(Cli, NumericOptionsSayWhatIsExpected) {
  struct Case { std::string args, want; };
  for (const Case& c : std::vector<Case>{
           {"generate m -n 0", "sharq: error: --steps: 0 is not an integer >= 1"},
           {"generate m -n abc", "sharq: error: --steps: abc is not an integer >= 1"},
           {"generate m -n 99999999999999999999", "--steps: 99999999999999999999 is not an integer >= 1"},
           {"generate m -n 5x", "--steps: 5x is not an integer >= 1"},
           {"generate m -t nan", "--temperature: nan is not a number >= 0"},
           {"generate m -t -1", "--temperature: -1 is not a number >= 0"},
           {"generate m -t inf", "--temperature: inf is not a number >= 0"},
           {"generate m -t 1e39", "--temperature: 1e39 is beyond the largest 32-bit float (3.40282e+38)"},
           {"generate m -t -1e39", "--temperature: -1e39 is beyond the largest 32-bit float"},
           {"generate m --top-p nan", "--top-p: nan is not a number in (0, 1]"},
           {"generate m --top-p 0", "--top-p: 0 is not a number in (0, 1]"},
           {"generate m --top-p 1.01", "--top-p: 1.01 is not a number in (0, 1]"},
           {"generate m --seed -1", "--seed: -1 is not a non-negative integer"},
           {"opcheck -M abc", "sharq: error: -M: abc is not an integer >= 1"},
           {"opcheck -M 0", "sharq: error: -M: 0 is not an integer >= 1"},
           {"opcheck -K ''", "-K: '' is not an integer >= 1"},
           {"opcheck -N 1.5", "-N: 1.5 is not an integer >= 1"},
           {"ppl m --data d --max-windows -1", "sharq: error: --max-windows: -1 is not an integer >= 0"},
           {"ppl m --data d --ctx 1", "--ctx: 1 is not an integer >= 2"},
           {"eval m --limit -1", "sharq: error: --limit: -1 is not an integer >= 0"},
           {"analyze m --data d --tokens 0", "--tokens: 0 is not an integer >= 1"},
           {"bench gemm -M 1,0", "-M: 0 is not an integer >= 1"},
           {"bench gemm --max-sets 65", "--max-sets: 65 is not an integer in [1, 64]"},
           {"bench gemm --reps 0", "--reps: 0 is not an integer >= 1"},
           {"bench gemm --splits -1", "--splits: -1 is not an integer >= 0"},
           {"bench gemm --splits two", "--splits: two is not an integer >= 0"},
       }) {
    const Result r = run(c.args);
    EXPECT_EQ(r.status, 1) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.want), std::string::npos) << c.args << "\n" << r.out;
  }
  // a choice outside its set, refused by CLI11's own check (its exit code is 105): the removed
  // prefill_ws kernel name is one
  const Result k = run("bench gemm --kernel prefill_ws");
  EXPECT_NE(k.status, 0) << k.out;
  EXPECT_NE(k.out.find("--kernel: prefill_ws not in {auto,small,prefill}"), std::string::npos) << k.out;
  // an output path given empty is refused the same way, not taken for "not given" (found by a probe)
  for (const std::string c : {"analyze m --data d --svg ''", "opcheck --save ''", "bench model --synthetic llama3.1-8b --csv ''",
                              "bench serve --csv ''"}) {
    const Result e = run(c);
    EXPECT_NE(e.status, 0) << c << "\n" << e.out;
    EXPECT_NE(e.out.find(": the path is empty"), std::string::npos) << c << "\n" << e.out;
  }
  // good values still parse; the last of a repeated option wins
  const Result r = run("opcheck -M 0 -M 2 -K 64 -N +4 --schemes nvfp4 --csv");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("nvfp4,2,64,4,"), std::string::npos) << r.out;
}

// Not a regular file (a FIFO would block, /dev/zero never ends): refused by name before reading.
TEST(Cli, OnlyRegularFilesAreRead) {
  const auto dir = std::filesystem::temp_directory_path() / "sharq_cli_fifo";
  std::filesystem::create_directories(dir);
  const std::string fifo = (dir / "x.npy").string();
  std::filesystem::remove(fifo);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  Result r = run("opcheck --x " + fifo);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find(fifo + ": is not a regular file"), std::string::npos) << r.out;
  r = run("opcheck --w /dev/zero");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("/dev/zero: is not a regular file"), std::string::npos) << r.out;
}

TEST(Cli, RepeatedOptionsTakeTheLastValue) {
  const Result r = run("opcheck -M 2 -K 64 -N 4 --schemes fp32 --schemes nosuch");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("unknown scheme 'nosuch'"), std::string::npos) << r.out;
}

TEST(Cli, UnknownCommandsAreNamed) {
  Result r = run("nosuchcommand");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("sharq: error: unknown command 'nosuchcommand' (commands: opcheck, generate"), std::string::npos) << r.out;
  r = run("bench nosuch");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("unknown bench command 'nosuch' (commands: gemm, model"), std::string::npos) << r.out;  // ", serve" follows where the server is built
  EXPECT_EQ(run("--version").status, 0);
  EXPECT_EQ(run("opcheck --help").status, 0);
}

// bench model's options are checked before it looks for a GPU (a build without CUDA says that
// first, and the test skips the rest).
TEST(Cli, BenchModelOptionsAreChecked) {
  Result r = run("bench model");
  EXPECT_EQ(r.status, 1);
  if (r.out.find("built without CUDA") != std::string::npos) GTEST_SKIP() << "a build without CUDA says so first";
  EXPECT_NE(r.out.find("MODEL or --synthetic"), std::string::npos) << r.out;
  r = run("bench model --synthetic gpt2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--synthetic"), std::string::npos) << r.out;
  r = run("bench model --synthetic llama3.1-8b --prefill 8y2048");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--prefill: '8y2048' is not BxN"), std::string::npos) << r.out;
  r = run("bench model --synthetic llama3.1-8b --schemes mxfp4");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("mxfp4"), std::string::npos) << r.out;
  r = run("bench model --synthetic llama3.1-8b --torch-tok-s 0");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--torch-tok-s: 0 is not"), std::string::npos) << r.out;
  r = run("bench model --synthetic llama3.1-8b --gemv16-max-m 5");  // the GEMV serves at most 4 rows
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--gemv16-max-m: 5 is not"), std::string::npos) << r.out;
  // the choice flags: a value outside the set is refused naming the flag
  for (const std::string flag_value : {"--fusion some", "--reduce-fusion rope", "--gemm-residual yes",
                                       "--prune-last-layer 1"}) {
    r = run("bench model --synthetic llama3.1-8b " + flag_value);
    EXPECT_NE(r.status, 0) << flag_value;
    const std::string want = flag_value.substr(0, flag_value.find(' ')) + ": " + flag_value.substr(flag_value.find(' ') + 1) +
                             " not in";
    EXPECT_NE(r.out.find(want), std::string::npos) << r.out;
  }
}

// Comma-separated lists: an empty item or an item given twice is an error naming the flag or the list
// (CLI11 would drop the empty item; a scheme given twice would run twice or once without a word). opcheck's
// sizes cannot be given with the arrays they come from, nor --csv with --json.
TEST(Cli, ListsRefuseEmptyAndRepeatedItems) {
  const std::pair<const char*, const char*> cases[] = {
      {"bench gemm --m 1,,2", "-M: an empty item in '1,,2'"},
      {"bench gemm --m 5,", "-M: an empty item in '5,'"},
      {"bench gemm --m 1,1", "-M: 1 is given twice"},
      {"bench gemm --layer qkv,qkv", "--layer: 'qkv' is given twice"},
      {"bench model --synthetic llama3.1-8b --batches 1,,8", "--batches: an empty item in '1,,8'"},
      {"bench model --synthetic llama3.1-8b --batches 8,8", "--batches: 8 is given twice"},
      {"bench model --synthetic llama3.1-8b --prefill 1x512,,2x4", "--prefill: an empty item in '1x512,,2x4'"},
      {"opcheck --schemes fp32,fp32", "scheme list 'fp32,fp32' names the scheme 'fp32' twice"},
      {"opcheck --schemes sharq,sharq:token", "names the scheme 'sharq' twice"},  // one scheme, two spellings
      {"opcheck --schemes fp32,,nvfp4", "scheme list 'fp32,,nvfp4' has an empty item"},
      {"opcheck -M 4 --x x.npy", "--m excludes --x"},
      {"opcheck -N 4 --w w.npy", "--n excludes --w"},
      {"opcheck --csv --json", "--csv excludes --json"},
  };
  for (const auto& [args, want] : cases) {
    const Result r = run(args);
    EXPECT_NE(r.status, 0) << args;
    if (r.out.find("built without CUDA") != std::string::npos) continue;  // bench gemm checks its lists in the CUDA build
    EXPECT_NE(r.out.find(want), std::string::npos) << args << ": " << r.out;
  }
}

// A directory where a file is expected, a missing path: named, with what is wrong.
TEST(Cli, PathsThatAreNotFilesAreNamed) {
  const auto dir = std::filesystem::temp_directory_path() / "sharq_cli_dir";
  std::filesystem::create_directories(dir);
  Result r = run("opcheck --x " + dir.string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--x: " + dir.string() + ": is a directory"), std::string::npos) << r.out;
  r = run("ppl " + dir.string() + "/none --data x");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find(dir.string() + "/none: no such file or directory"), std::string::npos) << r.out;
  r = run("eval " + std::string(SHARQ_SOURCE_DIR) + "/README.md --data-dir " + std::string(SHARQ_SOURCE_DIR) + "/README.md");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--data-dir: " + std::string(SHARQ_SOURCE_DIR) + "/README.md: is not a directory"), std::string::npos)
      << r.out;
  // permission denied says so (root can read anything: nothing to test then)
  if (geteuid() != 0) {
    const auto locked = dir / "locked";
    std::filesystem::create_directories(locked);
    std::filesystem::permissions(locked, std::filesystem::perms::none);
    r = run("generate " + locked.string());
    std::filesystem::permissions(locked, std::filesystem::perms::owner_all);
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find(locked.string() + ": permission denied"), std::string::npos) << r.out;
  }
}

// An empty value given on purpose is an error, never "the default" (an unset shell variable in
// `--api-key "$KEY"` must not start a server without authentication).
TEST(Cli, EmptyValuesGivenOnPurposeAreRefused) {
  const std::string tiny = std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny/llama3";
  for (const std::string cmd : {"generate", "ppl", "eval", "analyze"}) {
    const Result r = run(cmd + " " + tiny + " --tokenizer ''" + (cmd == "ppl" || cmd == "analyze" ? " --data x" : ""));
    EXPECT_EQ(r.status, 1) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("--tokenizer: the path is empty"), std::string::npos) << cmd << ": " << r.out;
  }
  Result r = run("quantize " + tiny + " " + (std::filesystem::temp_directory_path() / "sharq_cli_none").string() + " --calib-tokens 64");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--calib-tokens needs --calib-data"), std::string::npos) << r.out;
  if (run("serve --help").status != 0) return;  // a CLI built without the server
  r = run("serve " + tiny + " --api-key ''");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--api-key: the key is empty"), std::string::npos) << r.out;
  r = run("serve " + tiny + " --host ''");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--host: the address is empty"), std::string::npos) << r.out;
}

// Shapes opcheck cannot run: refused before allocating, naming the flags.
TEST(Cli, OpcheckRefusesEmptyAndHugeShapes) {
  Result r = run("opcheck -K 100000000");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("K=100000000 (-K)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GiB limit"), std::string::npos) << r.out;
  const auto dir = std::filesystem::temp_directory_path() / "sharq_cli_npy";
  std::filesystem::create_directories(dir);
  sharq::write_npy((dir / "x.npy").string(), nullptr, {4, 0});
  r = run("opcheck --x " + (dir / "x.npy").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("x.npy: X is 4x0, an empty array"), std::string::npos) << r.out;
  // non-finite inputs, and finite ones whose products overflow FP32: an error, not a table of nan
  std::vector<float> x(4 * 128, 0.5f), w(8 * 128, 0.25f), big(4 * 128, 3e38f);
  x[130] = std::numeric_limits<float>::quiet_NaN();
  sharq::write_npy((dir / "x_nan.npy").string(), x.data(), {4, 128});
  sharq::write_npy((dir / "w.npy").string(), w.data(), {8, 128});
  sharq::write_npy((dir / "x_big.npy").string(), big.data(), {4, 128});
  r = run("opcheck --x " + (dir / "x_nan.npy").string() + " --w " + (dir / "w.npy").string() + " --schemes fp32,nvfp4");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("x_nan.npy: X holds the non-finite value nan at [1, 2]"), std::string::npos) << r.out;
  r = run("opcheck --x " + (dir / "x_big.npy").string() + " --w " + (dir / "w.npy").string() + " --schemes fp32,nvfp4");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("reference output Y = X W^T overflows at [0, 0]"), std::string::npos) << r.out;
}

std::string stories() { return std::string(SHARQ_SOURCE_DIR) + "/../shared/models/stories260K/stories260K.bin"; }
bool have_stories() { return std::filesystem::exists(stories()); }

// The model's context (stories260K: 512) bounds every command: generate clamps -n (llama2.c) and
// says so; analyze --tokens and ppl --ctx beyond it are errors.
TEST(Cli, ContextBoundsAreStatedOrEnforced) {
  if (!have_stories()) GTEST_SKIP() << "no " << stories();
  const std::string data = std::string(SHARQ_SOURCE_DIR) + "/README.md";
  Result r = run("generate " + stories() + " -n 99999999999 -p Once");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("-n 99999999999 is beyond the model's max_position_embeddings 512"), std::string::npos) << r.out;
  r = run("analyze " + stories() + " --data " + data + " --tokens 100000");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--tokens 100000 exceeds the model's max_position_embeddings 512"), std::string::npos) << r.out;
  r = run("ppl " + stories() + " --data " + data + " --ctx 1024 -q");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--ctx 1024 exceeds"), std::string::npos) << r.out;
}

// A SharQ scheme as the reference runs and reports (its baseline is not added: the gap is measured
// against the reference, not for it).
TEST(Cli, PplTakesASharqReference) {
  if (!have_stories()) GTEST_SKIP() << "no " << stories();
  const std::string data = std::string(SHARQ_SOURCE_DIR) + "/README.md";
  const Result r = run("ppl " + stories() + " --data " + data + " --ctx 32 --max-windows 2 -q --schemes fp32 --reference sharq");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out.find("map::at"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fp32"), std::string::npos) << r.out;
}

TEST(Cli, EvalRefusesEmptyInput) {
  if (!have_stories()) GTEST_SKIP() << "no " << stories();
  const auto dir = std::filesystem::temp_directory_path() / "sharq_cli_eval";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "piqa.jsonl") << "\n  \n";
  const std::string base = "eval " + stories() + " --data-dir " + dir.string() + " -q";
  Result r = run(base + " --tasks piqa");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("piqa.jsonl: no examples"), std::string::npos) << r.out;
  r = run(base + " --tasks ''");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--tasks: '' names no task"), std::string::npos) << r.out;
  std::ofstream(dir / "piqa.jsonl") << R"({"query": "a", "choices": "ab", "gold": 0})" "\n";
  r = run(base + " --tasks piqa");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("'choices' must be an array of strings"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("%"), std::string::npos) << r.out;
}

// A llama2.c checkpoint whose token embeddings are NaN, loaded with --allow-nonfinite: every
// metric command reports non-finite results as such and exits 1; none prints a plausible number.
TEST(Cli, NonFiniteModelsGiveHonestMetrics) {
  if (!have_stories()) GTEST_SKIP() << "no " << stories();
  const auto dir = std::filesystem::temp_directory_path() / "sharq_cli_nan";
  std::filesystem::create_directories(dir);
  const std::string bin = (dir / "nan.bin").string();
  std::filesystem::copy_file(stories(), bin, std::filesystem::copy_options::overwrite_existing);
  {
    std::fstream f(bin, std::ios::in | std::ios::out | std::ios::binary);
    const float nan = std::nanf("");
    f.seekp(28);  // the 7 x int32 header, then token_embedding_table [vocab, dim]
    for (int i = 0; i < 512 * 64; ++i) f.write(reinterpret_cast<const char*>(&nan), 4);
  }
  const std::string tok = " --tokenizer " + std::string(SHARQ_SOURCE_DIR) + "/../shared/models/stories260K/tok512.bin";
  const std::string data = " --data " + std::string(SHARQ_SOURCE_DIR) + "/README.md";
  EXPECT_NE(run("ppl " + bin + tok + data + " --ctx 32 --max-windows 1 -q").status, 0);  // refused at load by default

  Result r = run("ppl " + bin + tok + data + " --ctx 32 --max-windows 1 -q --schemes fp32,nvfp4 --allow-nonfinite");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("NON-FINITE logits"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sharq: error: ppl: non-finite"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("100.00%"), std::string::npos) << r.out;

  const auto tasks = dir / "tasks";
  std::filesystem::create_directories(tasks);
  std::ofstream(tasks / "copa.jsonl") << R"({"query": "Once upon a", "choices": ["time", "dog"], "gold": 0})" "\n";
  r = run("eval " + bin + tok + " --data-dir " + tasks.string() + " --tasks copa --schemes fp32 -q --allow-nonfinite");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("NON-FINITE scores"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("%"), std::string::npos) << r.out;

  r = run("analyze " + bin + tok + data + " --tokens 16 --schemes nvfp4 --allow-nonfinite");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("sharq: error: analyze: non-finite"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nan"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("0.0000e+00"), std::string::npos) << r.out;
  // the FP8-fold table (--mxfp4-fp8) withholds its errors the same way: nan, never a number, exit 1
  r = run("analyze " + bin + tok + data + " --tokens 16 --schemes mxfp4 --mxfp4-fp8 --allow-nonfinite");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("MXFP4 on FP8 tensor cores"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sharq: error: analyze: non-finite"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(" 0.000e+00"), std::string::npos) << r.out;

  // generate has no metric to withhold: it stops at the first non-finite logits and warns
  r = run("generate " + bin + tok + " -n 8 --allow-nonfinite");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("sharq: warning: generation stopped: the logits at position 0 are not finite"), std::string::npos)
      << r.out;
}

// `sharq bench gemm` needs a CUDA build and a GPU; with no visible device (here forced, so that the
// test means the same on the GPU machine) it must say why and exit 1, never crash or hang.
TEST(Cli, BenchGemmWithoutAGpuFailsWithAReason) {
  const Result r = run("bench gemm --quick", "CUDA_VISIBLE_DEVICES=");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("bench gemm"), std::string::npos) << r.out;
  EXPECT_TRUE(r.out.find("no CUDA device") != std::string::npos || r.out.find("without CUDA") != std::string::npos) << r.out;
}

// --device cuda with no visible GPU (or a build without CUDA): a reason and exit 1, for every
// command that takes it; an unknown device is refused by the parser.
TEST(Cli, DeviceCudaWithoutAGpuFailsWithAReason) {
  const std::string model = std::string(SHARQ_SOURCE_DIR) + "/../shared/models/stories260K/stories260K.bin";
  const std::string data = std::string(SHARQ_SOURCE_DIR) + "/README.md";
  if (FILE* f = std::fopen(model.c_str(), "rb")) std::fclose(f);
  else GTEST_SKIP() << "no " << model;
  for (const std::string& cmd : {"generate " + model + " --device cuda -n 4",
                                 "ppl " + model + " --data " + data + " --ctx 16 --max-windows 1 --device cuda -q"}) {
    const Result r = run(cmd, "CUDA_VISIBLE_DEVICES=");
    EXPECT_EQ(r.status, 1) << cmd << "\n" << r.out;
    EXPECT_TRUE(r.out.find("no CUDA device") != std::string::npos || r.out.find("without CUDA") != std::string::npos)
        << cmd << "\n" << r.out;
  }
  EXPECT_NE(run("generate " + model + " --device tpu").status, 0);
}

}  // namespace

// quantize --calib-data: a missing or empty file exits non-zero naming the flag and the file (and
// writes nothing); a good one writes the W4A4 form and says so. --synthetic takes OUT alone.
namespace {
TEST(Cli, QuantizeCalibDataIsCheckedAndNamed) {
  const std::string tiny = std::string(SHARQ_SOURCE_DIR) + "/tests/data/tiny/llama3";
  const auto dir = std::filesystem::temp_directory_path() / ("sharq_cli_calib_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string out = (dir / "out").string(), empty = (dir / "empty.txt").string(), missing = (dir / "missing.txt").string();
  std::ofstream(empty).close();
  Result r = run("quantize " + tiny + " " + out + " --calib-data " + missing + " -q");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--calib-data: " + missing + ": no such file or directory"), std::string::npos) << r.out;
  r = run("quantize " + tiny + " " + out + " --calib-data " + empty + " -q");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--calib-data: " + empty + ": the data file is empty"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(out)) << "nothing written";
  r = run("quantize " + tiny + " " + out + " --calib-data " + empty + " --calib-tokens 0 -q");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--calib-tokens"), std::string::npos) << r.out;
  if (std::filesystem::exists(stories())) {
    const std::string data = std::string(SHARQ_SOURCE_DIR) + "/../shared/data/tinystories/sample.txt";
    r = run("quantize " + stories() + " " + out + " --scheme sharq --format modelopt --calib-data " + data + " --calib-tokens 64 -q");
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_NE(r.out.find("W4A4: static input scales, the amax over 64 calibration tokens"), std::string::npos) << r.out;
    r = run("quantize " + stories() + " " + (dir / "w16").string() + " --scheme w4a16 --calib-data " + data + " -q");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("--calib-data: scheme 'w4a16'"), std::string::npos) << r.out;
    // more tokens asked for than the text gives: an error, not a silently shorter calibration
    r = run("quantize " + stories() + " " + (dir / "many").string() + " --scheme nvfp4 --calib-data " + data +
            " --calib-tokens 99999999 -q");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("fewer than the --calib-tokens 99999999 asked for"), std::string::npos) << r.out;
    EXPECT_FALSE(std::filesystem::exists(dir / "many")) << "nothing written";
  }
  r = run("quantize " + tiny + " " + out + " --seed 5 -q");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--seed seeds the --synthetic weights only"), std::string::npos) << r.out;
  r = run("quantize --synthetic llama3.1-8b " + tiny + " " + out);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--synthetic replaces MODEL"), std::string::npos) << r.out;
  r = run("quantize --synthetic nosuch " + out);
  EXPECT_NE(r.status, 0);
  r = run("quantize " + tiny);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("MODEL and OUT are required"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}
}  // namespace
