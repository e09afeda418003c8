// The CLI's contract: a clean run exits 0; bad input exits non-zero with a message that names
// the problem.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>
#include <sys/wait.h>

namespace {

struct Result { int status; std::string out; };

Result run(const std::string& args, const std::string& env = "") {
  const std::string cmd = env + (env.empty() ? "" : " ") + std::string(SHARQ_CLI_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  Result r{-1, {}};
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
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
