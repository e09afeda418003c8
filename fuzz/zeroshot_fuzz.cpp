// libFuzzer target for the zero-shot task reader (the <task>.jsonl files of `sharq eval`), through
// its public entry point check_zeroshot_task (sharq/tools/zeroshot.h). The first input byte picks
// the task (each task has its own fields); the rest is the file's text. A bad file must throw
// std::runtime_error (the CLI prints it as "sharq: error: <file>:<line>: ...") and nothing else.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "sharq/tools/zeroshot.h"

namespace {
const char* const kTasks[] = {"arc_challenge", "arc_easy", "boolq", "copa", "lambada_openai",
                              "openbook_qa", "piqa", "siqa", "winogrande"};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string task = kTasks[data[0] % (sizeof kTasks / sizeof kTasks[0])];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  for (int64_t limit : {int64_t{0}, int64_t{2}}) {
    try {
      (void)sharq::check_zeroshot_task(text, task, task + ".jsonl", limit);
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}
