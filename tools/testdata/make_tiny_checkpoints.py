"""Make the tiny random-weight checkpoints of tests/data/tiny/ and their transformers logits.

Run where Hugging Face `transformers` is installed (the GPU machine has it; it needs no GPU):
    python3 tools/testdata/make_tiny_checkpoints.py OUT_DIR
Each architecture gets OUT_DIR/<name>/ with config.json, *.safetensors (one model sharded, to
exercise model.safetensors.index.json) and reference.json = {prompt_ids, logits [T x vocab]} from
the model's own fp32 forward pass. Weights are random (seeded); norms are perturbed away from 1 so
that a forward pass that forgot a norm weight cannot pass.
"""
import json
import os
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, MixtralConfig,
                          MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                          Qwen3MoeConfig, Qwen3MoeForCausalLM)

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, initializer_range=0.1,
              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

MODELS = {
    # Llama 3.1 style: llama3 rope scaling, theta 500000
    "llama3": (LlamaConfig, LlamaForCausalLM, dict(rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
    # Llama 2 style, tied embeddings
    "llama2_tied": (LlamaConfig, LlamaForCausalLM, dict(rope_theta=10000.0, tie_word_embeddings=True)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(rope_theta=1000000.0, sliding_window=None)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(rope_theta=1000000.0, use_sliding_window=False)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(rope_theta=1000000.0, head_dim=32, use_sliding_window=False)),
    "mixtral": (MixtralConfig, MixtralForCausalLM, dict(rope_theta=1000000.0, num_local_experts=4,
                                                         num_experts_per_tok=2, sliding_window=None)),
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(rope_theta=1000000.0, head_dim=32, num_experts=4,
                                                            num_experts_per_tok=2, moe_intermediate_size=48,
                                                            norm_topk_prob=False, decoder_sparse_step=1,
                                                            mlp_only_layers=[], use_sliding_window=False)),
}


def main(out):
    for i, (name, (cfg_cls, model_cls, extra)) in enumerate(MODELS.items()):
        torch.manual_seed(1000 + i)
        kw = dict(COMMON)
        kw.update(extra)
        cfg = cfg_cls(**kw)
        model = model_cls(cfg).float().eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.add_(torch.empty_like(p).uniform_(-0.5, 0.5))
                elif "bias" in pname:
                    p.copy_(torch.empty_like(p).uniform_(-0.5, 0.5))
            g = torch.Generator().manual_seed(7 + i)
            ids = torch.randint(3, cfg.vocab_size, (1, 24), generator=g)
            logits = model(ids).logits[0].float()
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        shard = "40KB" if name == "mistral" else "50MB"
        model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump({"arch": name, "producer": f"transformers {transformers.__version__}, torch {torch.__version__}, fp32 CPU",
                       "prompt_ids": ids[0].tolist(), "logits_shape": list(logits.shape),
                       "logits": [round(v, 7) for v in logits.flatten().tolist()]}, f)
        from safetensors import safe_open
        saved = []
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".safetensors"):
                with safe_open(os.path.join(d, fn), "pt") as f:
                    saved += [(k, tuple(f.get_slice(k).get_shape())) for k in f.keys()]
        print(name, "params", sum(p.numel() for p in model.parameters()), "files", sorted(os.listdir(d)))
        print("  saved tensors (layer 0 and globals):", [t for t in sorted(saved) if "layers.1." not in t[0]])


if __name__ == "__main__":
    main(sys.argv[1])
