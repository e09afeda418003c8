// libFuzzer target for the quantized-checkpoint reader (read_quantization_config, through
// load_model_weights): the input is split at its first two NUL bytes into config.json,
// hf_quant_config.json (not written when empty) and model.safetensors, written to a temporary
// directory that is then loaded. Any input must load or throw CheckpointError; anything else (a
// crash, a sanitizer report, another exception escaping) is a bug. A loaded quantized projection is
// checked to lie inside the file and its NVFP4 / FP8 payload is touched, so a bad range shows up
// under ASan. Seeds: fuzz/seeds/quantized_checkpoint (made by fuzz/seeds/make_quantized_seeds.py).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "sharq/model/checkpoint_error.h"
#include "sharq/model/quantized_checkpoint.h"
#include "sharq/model/weights.h"

namespace {

namespace fs = std::filesystem;

const fs::path& work_dir() {
  static const fs::path dir = [] {
    std::string t = (fs::temp_directory_path() / "sharq_qfuzz_XXXXXX").string();
    if (!::mkdtemp(t.data())) std::abort();
    return fs::path(t);
  }();
  return dir;
}

void write(const fs::path& p, const uint8_t* data, size_t n) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!f) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path& dir = work_dir();
  const uint8_t* end = data + size;
  const uint8_t* nul1 = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const uint8_t* config_end = nul1 ? nul1 : end;
  const uint8_t* hq = nul1 ? nul1 + 1 : end;
  const uint8_t* nul2 = hq < end ? static_cast<const uint8_t*>(std::memchr(hq, 0, static_cast<size_t>(end - hq))) : nullptr;
  const uint8_t* hq_end = nul2 ? nul2 : end;
  const uint8_t* st = nul2 ? nul2 + 1 : end;
  write(dir / "config.json", data, static_cast<size_t>(config_end - data));
  std::error_code ec;
  if (hq_end > hq) write(dir / "hf_quant_config.json", hq, static_cast<size_t>(hq_end - hq));
  else fs::remove(dir / "hf_quant_config.json", ec);
  write(dir / "model.safetensors", st, static_cast<size_t>(end - st));
  try {
    const sharq::ModelWeights w = sharq::load_model_weights(dir.string());
    volatile uint32_t sink = 0;
    for (const auto& [name, t] : w.tensors) {
      if (!t.quantized) continue;
      const sharq::QuantizedWeight& q = *t.quantized;
      if (q.rows <= 0 || q.cols <= 0) std::abort();
      for (size_t i = 0; i < q.codes.bytes; ++i) sink = sink + q.codes.data[i];
      for (size_t i = 0; i < q.scales.bytes; ++i) sink = sink + q.scales.data[i];
      if (q.weights == sharq::StoredWeights::fp8) {
        if (q.channel_scales.size() != static_cast<size_t>(q.rows)) std::abort();
        continue;
      }
      if (!(q.global > 0.0f)) std::abort();
      if (q.weights == sharq::StoredWeights::nvfp4_32) sink = sink + sharq::nvfp4_32_matrix(q).blocks.size();
      else sink = sink + sharq::nvfp4_16_matrix(q).blocks.size();
    }
  } catch (const sharq::CheckpointError&) {
  }
  return 0;
}
