#!/usr/bin/env python3
"""Writes the seeds of quantized_checkpoint_fuzz: a 1-layer model (hidden 16, vocab 8, tied) in
each quantized layout sharq reads. A seed is config.json, NUL, hf_quant_config.json (may be empty),
NUL, model.safetensors (see fuzz/quantized_checkpoint_fuzz.cpp).

    python3 fuzz/seeds/make_quantized_seeds.py fuzz/seeds/quantized_checkpoint
"""
import json
import struct
import sys
from pathlib import Path

H, I, V = 16, 16, 8
PROJ = {"self_attn.q_proj": (16, H), "self_attn.k_proj": (16, H), "self_attn.v_proj": (16, H),
        "self_attn.o_proj": (H, 16), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
CONFIG = {"model_type": "llama", "hidden_size": H, "intermediate_size": I, "num_hidden_layers": 1,
          "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": V,
          "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}


def safetensors(tensors):  # [(name, dtype, shape, bytes)]
    header, blob = {}, b""
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + blob


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def model(parts):  # parts(prefix, n, k) -> tensors of one projection
    t = [("model.embed_tokens.weight", "F32", [V, H], f32([((i * 7) % 11 - 5) / 8 for i in range(V * H)])),
         ("model.norm.weight", "F32", [H], f32([1.0] * H)),
         ("model.layers.0.input_layernorm.weight", "F32", [H], f32([1.0] * H)),
         ("model.layers.0.post_attention_layernorm.weight", "F32", [H], f32([1.0] * H))]
    for name, (n, k) in PROJ.items():
        t += parts(f"model.layers.0.{name}.", n, k)
    return safetensors(t)


def codes(n, k):
    return bytes((i * 37 + 11) & 0xFF for i in range(n * k // 2))


def scales(n, k):
    return bytes(0x38 + (i % 3) * 8 for i in range(n * k // 16))


def ct_nvfp4(p, n, k):
    return [(p + "weight_packed", "U8", [n, k // 2], codes(n, k)), (p + "weight_scale", "F8_E4M3", [n, k // 16], scales(n, k)),
            (p + "weight_global_scale", "F32", [1], f32([2688.0 / 3.0])), (p + "input_global_scale", "F32", [1], f32([448.0]))]


def mo_nvfp4(p, n, k):
    return [(p + "weight", "U8", [n, k // 2], codes(n, k)), (p + "weight_scale", "F8_E4M3", [n, k // 16], bytes([0x40] * (n * k // 16))),
            (p + "weight_scale_2", "F32", [], f32([3.0 / 2688.0]))]


def ct_fp8(p, n, k):
    return [(p + "weight", "F8_E4M3", [n, k], codes(n, 2 * k)), (p + "weight_scale", "F32", [n, 1], f32([0.01] * n))]


def ct_config(fmt, weights, inputs, marker=None):
    q = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed", "ignore": ["lm_head"],
         "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": inputs}}}
    if marker:
        q["sharq"] = marker
    return q


NV_W = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16, "dynamic": False}
seeds = {
    "ct_nvfp4_w4a4": (ct_config("nvfp4-pack-quantized", NV_W, {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                                                               "group_size": 16, "dynamic": "local"}), None, model(ct_nvfp4)),
    "ct_nvfp4_sharq_exact_g": (ct_config("nvfp4-pack-quantized", NV_W, None, {
        "scheme": "nvfp4", "weight_scale_block": 16,
        "global_scales": {f"model.layers.0.{n}": float.hex(struct.unpack("<f", f32([3.0 / 2688.0]))[0]) for n in PROJ}}),
        None, model(ct_nvfp4)),
    "ct_fp8_channel": (ct_config("float-quantized", {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"},
                                 {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}), None, model(ct_fp8)),
    "mo_nvfp4_sharq_w32": ({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "producer": {"name": "sharq"},
                            "sharq": {"scheme": "sharq", "weight_scale_block": 32}}, None, model(mo_nvfp4)),
    "mo_hf_quant_config": (None, {"producer": {"name": "modelopt", "version": "0.29.0"},
                                  "quantization": {"quant_algo": "W4A16_NVFP4", "group_size": 16, "exclude_modules": ["lm_head"]}},
                           model(mo_nvfp4)),
}
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for name, (q, hq, st) in seeds.items():
    c = dict(CONFIG)
    if q is not None:
        c["quantization_config"] = q
    data = json.dumps(c, separators=(",", ":")).encode() + b"\0" + (json.dumps(hq).encode() if hq else b"") + b"\0" + st
    (out / name).write_bytes(data)
