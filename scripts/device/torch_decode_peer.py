#!/usr/bin/env python3
"""The same-run torch peer of `sharq bench model`'s batch-1 decode: a hand-written Llama decode step
(the shapes of --synthetic llama3.1-8b by default), random weights, a static KV cache, captured in one
CUDA graph and replayed. It is what a competent torch user gets without writing kernels: cuBLAS
linears (q/k/v and gate/up each one fused matmul), F.scaled_dot_product_attention over the static
cache with a length mask, unfused RMSNorm / RoPE / SwiGLU in torch ops, lm_head, argmax.

Usage (on the GPU machine): torch_decode_peer.py [--dtype float16,bfloat16] [--context 1024] [--steps 200]
Prints one line per dtype: step µs and tok/s. torch is a peer here, never a dependency of sharq.
"""
import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, head dim, vocab, rope theta
    "llama3.1-8b": (4096, 14336, 32, 32, 8, 128, 128256, 500000.0),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 128, 152064, 1000000.0),
}


def run(dtype, shape, context, steps, seed):
    H, I, NL, NH, NKV, HD, V, theta = shape
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(seed)

    def w(n, k):
        return (torch.randn(n, k, device=dev, dtype=torch.float32, generator=g) * (1.0 / k ** 0.5)).to(dtype)

    layers = []
    for _ in range(NL):
        layers.append(dict(
            qkv=w((NH + 2 * NKV) * HD, H), o=w(H, NH * HD), gu=w(2 * I, H), down=w(H, I),
            n1=torch.ones(H, device=dev, dtype=dtype), n2=torch.ones(H, device=dev, dtype=dtype)))
    embed = w(V, H)
    lm_head = w(V, H)
    final_norm = torch.ones(H, device=dev, dtype=dtype)
    T = context + steps + 16
    kc = torch.zeros(NL, 1, NKV, T, HD, device=dev, dtype=dtype)
    vc = torch.zeros_like(kc)
    kc.normal_(generator=g)
    vc.normal_(generator=g)
    inv_freq = 1.0 / (theta ** (torch.arange(0, HD, 2, device=dev, dtype=torch.float32) / HD))
    tok = torch.zeros(1, dtype=torch.long, device=dev)
    pos = torch.full((1,), context, dtype=torch.long, device=dev)
    ar = torch.arange(T, device=dev)

    def rms(x, wt):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype) * wt

    def rope(x, cos, sin):  # rotate-half
        x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def step():
        x = F.embedding(tok, embed)  # [1, H]
        ang = pos.float()[:, None] * inv_freq[None, :]
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
        mask = (ar <= pos)[None, None, None, :]  # [1, 1, 1, T]
        for li, L in enumerate(layers):
            h = rms(x, L["n1"])
            qkv = F.linear(h, L["qkv"])
            q = qkv[:, : NH * HD].view(1, NH, HD)
            k = qkv[:, NH * HD: (NH + NKV) * HD].view(1, NKV, HD)
            v = qkv[:, (NH + NKV) * HD:].view(1, NKV, HD)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            kc[li].index_copy_(2, pos, k[:, :, None, :])
            vc[li].index_copy_(2, pos, v[:, :, None, :])
            a = F.scaled_dot_product_attention(q[:, :, None, :], kc[li], vc[li], attn_mask=mask, enable_gqa=True)
            x = x + F.linear(a.reshape(1, NH * HD), L["o"])
            h = rms(x, L["n2"])
            gu = F.linear(h, L["gu"])
            x = x + F.linear(F.silu(gu[:, :I]) * gu[:, I:], L["down"])
        logits = F.linear(rms(x, final_norm), lm_head)
        return torch.argmax(logits, dim=-1)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    del out
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="float16,bfloat16")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {a.model}, batch 1, context {a.context}, "
          f"CUDA graph of one decode step")
    for name in a.dtype.split(","):
        dt = run(getattr(torch, name), SHAPES[a.model], a.context, a.steps, a.seed)
        print(f"torch {name:9s} step {dt * 1e6:8.1f} us  {1.0 / dt:7.1f} tok/s", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
