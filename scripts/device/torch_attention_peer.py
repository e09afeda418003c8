#!/usr/bin/env python3
"""The same-run torch peers of `paged_attention_test`'s prefill timing: causal attention over one
sequence of --tokens tokens with Llama-3.1-8B's heads (32 query heads, 8 KV heads, head_dim 128) in
FP16, through F.scaled_dot_product_attention with each backend torch offers on the card (FlashAttention-2
kernels, cuDNN's fused attention, the memory-efficient kernel). K and V are expanded to the query heads
before timing (GQA), so the timed call is attention alone; the contiguous K/V is the peers' advantage
over sharq's paged cache.

Two timings per backend, because a compute-bound kernel's clock depends on how long the card has been
loaded (docs/perf/engine.md, eighth increment): a burst of --reps calls after 3 warm-up calls (the
boost clock, like paged_attention_test), and the same after --sustain seconds of back-to-back calls.

Usage (on the GPU machine): torch_attention_peer.py [--tokens 2048] [--reps 20] [--sustain 2.0]
Prints one line per backend and timing: µs per call and causal TFLOP/s (4 hd heads S (S + 1) / 2).
torch is a peer here, never a dependency of sharq.
"""
import argparse
import time

import torch
import torch.nn.functional as F


def timed(fn, reps):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) * 1000.0 / reps  # µs per call


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sustain", type=float, default=2.0)
    a = ap.parse_args()
    S, NH, NKV, HD = a.tokens, a.heads, a.kv_heads, a.head_dim
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(1, NH, S, HD, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(1, NKV, S, HD, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(1, NKV, S, HD, device="cuda", dtype=torch.float16, generator=g)
    k = k.repeat_interleave(NH // NKV, dim=1).contiguous()
    v = v.repeat_interleave(NH // NKV, dim=1).contiguous()
    flops = 4.0 * HD * NH * (S * (S + 1) / 2.0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}: causal attention, {S} tokens, "
          f"{NH} heads ({NKV} KV heads expanded), head_dim {HD}, FP16")
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        print("torch.nn.attention.sdpa_kernel is not available: no per-backend timing")
        return
    backends = [("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION")]
    for name, attr in backends:
        be = getattr(SDPBackend, attr, None)
        if be is None:
            print(f"{name:10s} n/a (this torch has no SDPBackend.{attr})")
            continue
        try:
            with sdpa_kernel([be]):
                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                burst = timed(fn, a.reps)
                t_end = time.time() + a.sustain
                while time.time() < t_end:
                    timed(fn, 10)
                sustained = timed(fn, a.reps)
            print(f"{name:10s} burst {burst:9.1f} us ({flops / burst * 1e-6:5.0f} TFLOP/s)   "
                  f"after {a.sustain:.1f} s {sustained:9.1f} us ({flops / sustained * 1e-6:5.0f} TFLOP/s)")
        except Exception as e:  # a backend that does not take these shapes on this card
            print(f"{name:10s} n/a ({type(e).__name__}: {str(e).splitlines()[0][:120]})")


if __name__ == "__main__":
    main()
