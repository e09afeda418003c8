#!/usr/bin/env bash
# Fuzz the checkpoint parsers (safetensors, llama2.c, config.json, quantized checkpoints) and the other bad-input readers
# (.npy, tokenizer.json, zero-shot .jsonl, chat templates) with libFuzzer + ASan/UBSan.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 30; or SHARQ_FUZZ_SECONDS)
#
# Builds build-fuzz with clang (-DSHARQ_FUZZ=ON), seeds each target from the real checkpoints in
# ../shared/models (or SHARQ_MODELS_DIR) plus small synthesized files, runs each for the given time
# and exits non-zero if any target crashes; crash inputs are kept under build-fuzz/artifacts/.
# Without clang (or its libFuzzer runtime) it prints why and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-${SHARQ_FUZZ_SECONDS:-30}}"
models="${SHARQ_MODELS_DIR:-$PWD/../shared/models}"

if ! command -v clang >/dev/null 2>&1 || ! command -v clang++ >/dev/null 2>&1; then
  echo "sharq fuzz: SKIPPED: clang/clang++ not found (install clang and libclang-rt-dev to fuzz the checkpoint parsers)"
  exit 0
fi
probe_dir="$(mktemp -d)"
work="$(mktemp -d)"
trap 'rm -rf "$probe_dir" "$work"' EXIT
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' > "$probe_dir/p.cpp"
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe_dir/p.cpp" -o "$probe_dir/p" >/dev/null 2>&1; then
  echo "sharq fuzz: SKIPPED: clang++ cannot link -fsanitize=fuzzer (install libclang-rt-dev matching $(clang++ --version | head -1))"
  exit 0
fi
if ! grep -q 'add_subdirectory(fuzz)' CMakeLists.txt; then
  echo "sharq fuzz: error: CMakeLists.txt does not add_subdirectory(fuzz) under SHARQ_FUZZ" >&2
  exit 1
fi
if [[ -f build-fuzz/CMakeCache.txt ]] && ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++' build-fuzz/CMakeCache.txt; then
  echo "sharq fuzz: error: build-fuzz was configured with another compiler; remove it and rerun" >&2
  exit 1
fi

CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARQ_FUZZ=ON \
  -DSHARQ_BUILD_TESTS=OFF -DSHARQ_BUILD_BENCH=OFF -DSHARQ_CUDA=OFF -DSHARQ_PYTHON=OFF >/dev/null
fuzz_targets=(safetensors_fuzz llama2c_fuzz config_fuzz quantized_checkpoint_fuzz npy_fuzz zeroshot_fuzz chat_template_fuzz)
if grep -q '^PCRE2_FOUND:INTERNAL=1' build-fuzz/CMakeCache.txt && grep -q '^UTF8PROC_FOUND:INTERNAL=1' build-fuzz/CMakeCache.txt; then
  fuzz_targets+=(tokenizer_json_fuzz)
else
  echo "sharq fuzz: note: tokenizer_json_fuzz not built (needs libpcre2-dev and libutf8proc-dev)"
fi
cmake --build build-fuzz --target "${fuzz_targets[@]}"

# --- seed corpora ---------------------------------------------------------------------------------
le() {  # value bytes: little-endian bytes of an integer
  local v=$1 n=$2 i
  for ((i = 0; i < n; i++)); do printf "\\x$(printf %02x $(((v >> (8 * i)) & 255)))"; done
}
safetensors_seed() {  # out header data-bytes-as-printf-escapes
  { le "${#2}" 8; printf '%s' "$2"; printf "$3"; } > "$1"
}
llama2c_seed() {  # out dim hidden layers heads kv_heads vocab seq_len
  local out=$1 dim=$2 hid=$3 L=$4 heads=$5 kv=$6 vocab=$7 seq=$8
  local hs=$((dim / heads)) absv=${7#-}
  local floats=$((absv * dim + L * (2 * dim + 2 * dim * dim + 2 * kv * hs * dim + 3 * hid * dim) + dim + seq * hs))
  ((vocab < 0)) && floats=$((floats + absv * dim))
  { for v in "$dim" "$hid" "$L" "$heads" "$kv" "$vocab" "$seq"; do le $((v & 0xffffffff)) 4; done
    head -c $((4 * floats)) /dev/zero; } > "$out"
}

mkdir -p "$work/safetensors" "$work/llama2c" "$work/config" "$work/quantized_checkpoint" "$work/npy" "$work/tokenizer_json" "$work/zeroshot" "$work/chat_template"
cp fuzz/seeds/chat_template/* "$work/chat_template/"
qwen_cfg="$models/../tokenizers/qwen3/tokenizer_config.json"  # the real Qwen3 template, when the shared data is there
if [[ -f "$qwen_cfg" ]] && command -v python3 >/dev/null 2>&1; then
  python3 -c 'import json, sys; sys.stdout.write(json.load(open(sys.argv[1]))["chat_template"])' "$qwen_cfg" \
    > "$work/chat_template/qwen3.jinja" || rm -f "$work/chat_template/qwen3.jinja"
fi
cp fuzz/seeds/quantized_checkpoint/* "$work/quantized_checkpoint/"
cp fuzz/seeds/npy/* "$work/npy/"
cp fuzz/seeds/tokenizer_json/* "$work/tokenizer_json/"
cp fuzz/seeds/zeroshot/* "$work/zeroshot/"
if [[ -d "$models/sharq-lm-30m" ]]; then
  cp "$models"/sharq-lm-30m/*.safetensors "$work/safetensors/"  # libFuzzer keeps the first -max_len bytes
  cp "$models/sharq-lm-30m/config.json" "$work/config/sharq-lm-30m.json"
else
  echo "sharq fuzz: note: $models/sharq-lm-30m not found; seeding safetensors/config from synthesized files only"
fi
if [[ -f "$models/stories260K/stories260K.bin" ]]; then
  cp "$models/stories260K/stories260K.bin" "$work/llama2c/"
else
  echo "sharq fuzz: note: $models/stories260K not found; seeding llama2c from synthesized files only"
fi
safetensors_seed "$work/safetensors/mixed" \
  '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},"c":{"dtype":"F16","shape":[],"data_offsets":[12,14]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[14,14]}}' \
  '\x00\x00\xc0\x3f\x00\x00\x10\xc0\x80\x3f\x40\xc0\x00\x3c'
safetensors_seed "$work/safetensors/empty" '{}' ''
llama2c_seed "$work/llama2c/tiny_tied" 4 4 1 2 1 3 2
llama2c_seed "$work/llama2c/tiny_untied" 4 6 2 2 2 -5 3
printf '%s' '{"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":131072,"rms_norm_eps":1e-05,"rope_theta":500000.0,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},"bos_token_id":128000,"eos_token_id":[128001,128008,128009]}' > "$work/config/llama31.json"
printf '%s' '{"model_type":"qwen3_moe","vocab_size":151936,"hidden_size":2048,"intermediate_size":6144,"moe_intermediate_size":768,"num_hidden_layers":48,"num_attention_heads":32,"num_key_value_heads":4,"head_dim":128,"max_position_embeddings":40960,"num_experts":128,"num_experts_per_tok":8,"norm_topk_prob":true,"decoder_sparse_step":1,"mlp_only_layers":[],"use_sliding_window":false,"max_window_layers":48,"rope_theta":1000000.0}' > "$work/config/qwen3moe.json"
printf '%s' '{"model_type":"mixtral","vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":32768,"num_local_experts":8,"num_experts_per_tok":2,"sliding_window":null,"rope_parameters":{"rope_type":"default","rope_theta":1000000.0}}' > "$work/config/mixtral.json"
printf '%s' '{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"max_position_embeddings":32768,"tie_word_embeddings":true,"use_sliding_window":false,"sliding_window":32768,"max_window_layers":21,"layer_types":["full_attention"]}' > "$work/config/qwen2.json"

# --- run ------------------------------------------------------------------------------------------
failed=()
run_target() {  # target max_len [dict]
  local target=$1 max_len=$2 dict=${3:-} artifacts="build-fuzz/artifacts/$1"
  rm -rf "$artifacts"  # reproducers of an earlier run would be reported as this run's
  mkdir -p "$artifacts"
  local args=(-max_total_time="$seconds" -max_len="$max_len" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1
              -artifact_prefix="$artifacts/")
  [[ -n "$dict" ]] && args+=(-dict="$dict")
  echo "sharq fuzz: $target for ${seconds}s (corpus: $(ls "$work/${target%_fuzz}" | wc -l) seeds)"
  if ! "build-fuzz/fuzz/$target" "${args[@]}" "$work/${target%_fuzz}" > "$work/$target.log" 2>&1; then
    tail -n 60 "$work/$target.log"
    echo "sharq fuzz: $target FAILED; reproducer(s): $(ls "$artifacts" | sed "s|^|$artifacts/|" | tr '\n' ' ')"
    failed+=("$target")
  else
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^Done [0-9]+ runs" "$work/$target.log" | tr "\n" " "
    echo
    echo "sharq fuzz: $target OK (corpus grew to $(ls "$work/${target%_fuzz}" | wc -l) inputs)"
  fi
}
run_target safetensors_fuzz 65536 fuzz/safetensors.dict
run_target llama2c_fuzz 1100000
run_target config_fuzz 8192 fuzz/config.dict
run_target quantized_checkpoint_fuzz 16384 fuzz/quantized_checkpoint.dict
run_target npy_fuzz 4096 fuzz/npy.dict
run_target zeroshot_fuzz 8192 fuzz/zeroshot.dict
run_target chat_template_fuzz 8192 fuzz/chat_template.dict
if [[ " ${fuzz_targets[*]} " == *" tokenizer_json_fuzz "* ]]; then
  run_target tokenizer_json_fuzz 16384 fuzz/tokenizer_json.dict
fi

if ((${#failed[@]})); then
  echo "sharq fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "sharq fuzz: no crashes (${seconds}s per target)"
