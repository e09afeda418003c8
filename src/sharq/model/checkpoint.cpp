#include "sharq/model/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sharq/model/loader_text.h"
#include "sharq/model/safetensors.h"

namespace sharq {
namespace fs = std::filesystem;

namespace {

// Index entries name files next to the index; anything that could climb out of the model
// directory is refused rather than resolved.
bool is_plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos && s.find('\\') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

// tensor name -> shard file, from model.safetensors.index.json
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  const std::vector<uint8_t> bytes = read_file_bytes(index_path);
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(fmt::format("{}: not valid JSON ({})", index_path, e.what()));
  }
  if (!index.is_object()) throw CheckpointError(fmt::format("{}: top level must be a JSON object", index_path));
  const auto wm = index.find("weight_map");
  if (wm == index.end()) throw CheckpointError(fmt::format("{}: field 'weight_map' is missing", index_path));
  if (!wm->is_object()) throw CheckpointError(fmt::format("{}: field 'weight_map' must be an object", index_path));
  std::map<std::string, std::string> out;
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string() || !is_plain_file_name(shard.get<std::string>()))
      throw CheckpointError(fmt::format("{}: field 'weight_map' entry for tensor '{}' must be a file name in the model directory", index_path, tensor));
    out.emplace(tensor, shard.get<std::string>());
  }
  if (out.empty()) throw CheckpointError(fmt::format("{}: field 'weight_map' is empty", index_path));
  return out;
}

}  // namespace

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const Tensor& Checkpoint::get(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const auto it = tensors.find(name);
  if (it == tensors.end()) throw CheckpointError(fmt::format("{}: tensor '{}' is missing (expected shape {})", source, name, loader_text::shape(expected_shape)));
  if (it->second.shape != expected_shape)
    throw CheckpointError(fmt::format("{}: tensor '{}' has shape {}, expected {}", source, name, loader_text::shape(it->second.shape), loader_text::shape(expected_shape)));
  return it->second;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw CheckpointError(fmt::format("{}: no such file", path));
  if (!fs::is_regular_file(st)) throw CheckpointError(fmt::format("{}: not a regular file", path));
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw CheckpointError(fmt::format("{}: cannot get the file size ({})", path, ec.message()));
  if (size > static_cast<uintmax_t>(std::numeric_limits<std::streamsize>::max()))
    throw CheckpointError(fmt::format("{}: file of {} bytes is too large to read", path, size));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError(fmt::format("{}: cannot open", path));
  if (size == 0) return {};  // nothing to read, and an empty vector's data() may be null
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (static_cast<uintmax_t>(f.gcount()) != size)
    throw CheckpointError(fmt::format("{}: read {} of {} bytes (file changed or unreadable)", path, f.gcount(), size));
  return bytes;
}

Checkpoint load_hf_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw CheckpointError(fmt::format("{}: not a directory (expected a Hugging Face model directory)", dir));
  const fs::path root(dir);
  const std::string config_path = (root / "config.json").string();
  if (!fs::exists(config_path, ec)) throw CheckpointError(fmt::format("{}: missing (a Hugging Face model directory needs config.json)", config_path));

  Checkpoint ck;
  ck.source = dir;
  ck.config = read_hf_config(config_path);

  const std::string index_path = (root / "model.safetensors.index.json").string();
  const std::string single_path = (root / "model.safetensors").string();
  if (fs::exists(index_path, ec)) {
    // Each shard is read once and only the tensors the index assigns to it are kept.
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [tensor, shard] : read_weight_map(index_path)) by_shard[shard].push_back(tensor);
    for (const auto& [shard, names] : by_shard) {
      const std::string shard_path = (root / shard).string();
      if (!fs::exists(shard_path, ec))
        throw CheckpointError(fmt::format("{}: shard file is missing (model.safetensors.index.json assigns {} tensors to it, e.g. '{}')",
                                          shard_path, names.size(), names.front()));
      std::map<std::string, Tensor> in_shard = read_safetensors(shard_path);
      for (const std::string& name : names) {
        auto it = in_shard.find(name);
        if (it == in_shard.end())
          throw CheckpointError(fmt::format("{}: tensor '{}' is missing from this shard (model.safetensors.index.json puts it there)", shard_path, name));
        ck.tensors.emplace(name, std::move(it->second));
      }
    }
  } else if (fs::exists(single_path, ec)) {
    ck.tensors = read_safetensors(single_path);
  } else {
    throw CheckpointError(fmt::format("{}: neither model.safetensors nor model.safetensors.index.json is present", dir));
  }

  // Tied models compute logits with embed_tokens (the transformer's rule), so a stored lm_head
  // copy would only cost memory; an untied model without lm_head cannot run at all.
  if (ck.config.tie_word_embeddings) {
    ck.tensors.erase("lm_head.weight");
  } else if (!ck.has("lm_head.weight")) {
    throw CheckpointError(fmt::format("{}: tensor 'lm_head.weight' is missing and config.json's tie_word_embeddings is false", dir));
  }
  return ck;
}

Checkpoint load_llama2c_checkpoint(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file_bytes(path);
  return parse_llama2c(bytes.data(), bytes.size(), path);
}

Checkpoint load_checkpoint(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw CheckpointError(fmt::format("{}: no such file or directory", path));
  if (fs::is_directory(st)) return load_hf_checkpoint(path);
  return load_llama2c_checkpoint(path);
}

}  // namespace sharq
