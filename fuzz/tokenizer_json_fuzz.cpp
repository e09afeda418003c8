// libFuzzer target for the tokenizer.json (byte-level BPE) reader. The reader takes a path, so each
// input is written to a per-process temporary file first. A tokenizer that loads must encode and
// decode a short text; a bad file must throw TokenizerError.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sharq/model/tokenizer.h"

namespace {

// Never destroyed (so the exit handler that removes the file can still read it).
const std::string& scratch_path() {
  static const std::string* const p = [] {
    const char* tmp = std::getenv("TMPDIR");
    auto* s = new std::string(std::string(tmp && *tmp ? tmp : "/tmp") + "/sharq_tokenizer_fuzz_" + std::to_string(getpid()) + ".json");
    std::atexit([] { std::remove(scratch_path().c_str()); });
    return s;
  }();
  return *p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  try {
    const auto tok = sharq::load_bpe_tokenizer_json(path);
    const std::vector<int32_t> ids = tok->encode("Once upon a time, 3.14 caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd!", true);
    (void)tok->decode(ids, false);
    if (!ids.empty()) (void)tok->decode_step(ids.front(), ids.back());
  } catch (const sharq::TokenizerError&) {
  }
  return 0;
}
