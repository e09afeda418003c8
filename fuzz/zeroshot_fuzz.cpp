// libFuzzer target for the zero-shot task reader (<task>.jsonl). Its parser is not exposed by
// sharq/tools/zeroshot.h, so this target compiles zeroshot.cpp into itself and calls its internal
// load_task(dir, task, limit) on a per-process temporary folder. The first input byte picks the
// task (each task has its own format); the rest is the file. A bad file must throw
// std::runtime_error (the CLI prints it as "sharq: error: <file>:<line>: ...").
// TODO: call a public parse entry point once zeroshot.h exposes one (see docs/robustness.md).
#include "../src/sharq/tools/zeroshot.cpp"

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace {

const char* const kTasks[] = {"arc_challenge", "arc_easy", "boolq", "copa", "lambada_openai",
                              "openbook_qa", "piqa", "siqa", "winogrande"};

// Never destroyed (so the exit handler that removes the folder can still read it).
const std::string& scratch_dir() {
  static const std::string* const d = [] {
    const char* tmp = std::getenv("TMPDIR");
    auto* s = new std::string(std::string(tmp && *tmp ? tmp : "/tmp") + "/sharq_zeroshot_fuzz_" + std::to_string(getpid()));
    std::filesystem::create_directories(*s);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return s;
  }();
  return *d;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string task = kTasks[data[0] % (sizeof kTasks / sizeof kTasks[0])];
  const std::string path = scratch_dir() + "/" + task + ".jsonl";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size > 1 && std::fwrite(data + 1, 1, size - 1, f) != size - 1) std::abort();
  std::fclose(f);
  for (int64_t limit : {int64_t{0}, int64_t{2}}) {
    try {
      (void)sharq::load_task(scratch_dir(), task, limit);
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}
