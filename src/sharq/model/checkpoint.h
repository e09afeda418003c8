// A loaded checkpoint: its config plus every tensor converted to FP32, under Hugging Face names
// ("model.embed_tokens.weight", "model.layers.3.self_attn.q_proj.weight", "lm_head.weight", ...).
// Loaders bound every length and offset by the file size and throw CheckpointError naming the file
// and the field or tensor on any problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "sharq/model/config.h"

namespace sharq {

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
  std::string dtype;   // source dtype: "F32", "F16", "BF16"
  int64_t numel() const;
};

struct Checkpoint {
  ModelConfig config;
  std::map<std::string, Tensor> tensors;
  std::string source;  // path it was loaded from, for messages

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // The tensor, checked against the expected shape; throws CheckpointError naming the source,
  // the tensor and both shapes.
  const Tensor& get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
};

// Hugging Face model directory: config.json + model.safetensors, or sharded *.safetensors with
// model.safetensors.index.json (each shard read once; only the tensors the index assigns to a shard
// are kept). Tensors in F32/F16/BF16. With tie_word_embeddings the result has no lm_head.weight
// (a stored copy is dropped; logits use model.embed_tokens.weight); without it, a missing
// lm_head.weight is an error.
Checkpoint load_hf_checkpoint(const std::string& dir);

// llama2.c checkpoint (.bin: 7 x int32 header, fp32 weights; the legacy "version 0" export, whose
// size the header determines exactly). Names are mapped to HF names; config.rope_interleaved = true.
// A negative vocab_size in the header means an untied classifier (lm_head.weight); otherwise
// tie_word_embeddings is set and there is no lm_head.weight.
Checkpoint load_llama2c_checkpoint(const std::string& path);

// Dispatch: a directory is a Hugging Face model, a file a llama2.c checkpoint.
Checkpoint load_checkpoint(const std::string& path);

// Building blocks of the loaders (also what the fuzz targets call).
// A llama2.c checkpoint already in memory; `name` is used in messages and as Checkpoint::source.
Checkpoint parse_llama2c(const uint8_t* bytes, size_t n, const std::string& name);
// A whole regular file in one read; throws CheckpointError naming the file.
std::vector<uint8_t> read_file_bytes(const std::string& path);

}  // namespace sharq
