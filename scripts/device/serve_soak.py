#!/usr/bin/env python3
"""The serving soak test (issue 15): N requests against a running `sharq serve`, with random
lengths, streamed and whole answers, client-side cancellations (a stream closed after a few chunks)
and malformed requests mixed in, from a pool of concurrent clients.

Checks: no request goes unanswered; every valid request gets 200 with its usage (exactly max_tokens
completion tokens under ignore_eos) and a streamed one its [DONE]; every malformed one gets 400 with
an OpenAI error object; /health stays 200; at the end no request runs and the KV blocks in use are
back to 0 (/metrics). Exit 0 when all hold, 1 otherwise. Standard library only.

Usage: serve_soak.py --url http://127.0.0.1:8000 [--n 1000] [--concurrency 64] [--vocab 256]
       [--max-model-len 1024] [--seed 1]
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import random
import sys
import time
import urllib.parse


def request(host, port, body, stream, cancel_after=None, timeout=300):
    """POST /v1/completions; returns (status, parsed body or list of stream chunks, done)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/v1/completions", body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if not stream or r.status != 200:
        raw = r.read()
        conn.close()
        try:
            return r.status, json.loads(raw), True
        except ValueError:
            return r.status, raw, True
    chunks, done = [], False
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        payload = line[6:]
        if payload == b"[DONE]":
            done = True
            break
        chunks.append(json.loads(payload))
        if cancel_after is not None and len(chunks) >= cancel_after:
            conn.close()  # the client leaves mid-stream: the server must cancel and free its blocks
            return r.status, chunks, False
    conn.close()
    return r.status, chunks, done


def metrics(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            k, v = line.split()[:2]
            out[k] = float(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=256, help="prompt ids are drawn from [0, vocab)")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port
    rng = random.Random(a.seed)

    def make(i):
        kind = rng.choices(["whole", "stream", "cancel", "malformed"], [35, 35, 15, 15])[0]
        n_in = rng.randint(1, min(256, a.max_model_len - 96))  # + max_tokens (<= 96) fits the context
        body = {"prompt": [rng.randrange(a.vocab) for _ in range(n_in)],
                "max_tokens": rng.randint(1, 96), "ignore_eos": rng.random() < 0.7,
                "temperature": rng.choice([0.0, 0.7, 1.0]), "seed": i}
        if kind == "malformed":
            bad = rng.randrange(5)
            if bad == 0:
                return kind, b'{"prompt": [1, 2', False, None
            if bad == 1:
                body["max_tokens"] = -3
            elif bad == 2:
                body["prompt"] = {"ids": [1]}
            elif bad == 3:
                body["prompt"] = [1] * a.max_model_len  # + max_tokens beyond the context
            else:
                body["temperature"] = "hot"
            return kind, body, False, None
        stream = kind != "whole"
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        return kind, body, stream, (rng.randint(1, 3) if kind == "cancel" else None)

    jobs = [make(i) for i in range(a.n)]
    failures = []

    def run(i):
        kind, body, stream, cancel_after = jobs[i]
        if kind == "cancel":
            body["max_tokens"] = max(body["max_tokens"], 64)
            body["ignore_eos"] = True
        try:
            st, res, done = request(host, port, body, stream, cancel_after)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            return f"{i} {kind}: {type(e).__name__}: {e}"
        if kind == "malformed":
            if st != 400 or not isinstance(res, dict) or "error" not in res:
                return f"{i} malformed: status {st}, {str(res)[:200]}"
            return None
        if st != 200:
            return f"{i} {kind}: status {st}, {str(res)[:200]}"
        if kind == "cancel":
            return None
        if kind == "whole":
            usage = res.get("usage", {})
            got = usage.get("completion_tokens", -1)
        else:
            if not done:
                return f"{i} stream: no [DONE]"
            usage = next((c["usage"] for c in reversed(res) if c.get("usage")), {})
            got = usage.get("completion_tokens", -1)
        want = body["max_tokens"]
        if (body["ignore_eos"] and got != want) or not (1 <= got <= want):
            return f"{i} {kind}: {got} completion tokens for max_tokens {want} (ignore_eos {body['ignore_eos']})"
        return None

    t0 = time.time()
    kinds = {}
    for k, *_ in jobs:
        kinds[k] = kinds.get(k, 0) + 1
    with cf.ThreadPoolExecutor(a.concurrency) as pool:
        for i, err in enumerate(pool.map(run, range(a.n))):
            if err:
                failures.append(err)
            if i % 200 == 199:  # the server keeps answering its health check under load
                c = http.client.HTTPConnection(host, port, timeout=30)
                c.request("GET", "/health")
                if c.getresponse().status != 200:
                    failures.append(f"/health not 200 after {i + 1} requests")
                c.close()
    wall = time.time() - t0
    m = {}
    for _ in range(100):  # cancellations are noticed at the next step: allow them to land
        m = metrics(host, port)
        if m.get("sharq_kv_blocks_used", -1) == 0 and m.get("sharq_num_requests_running", -1) == 0:
            break
        time.sleep(0.1)
    print(f"soak: {a.n} requests ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}) in {wall:.1f} s, "
          f"concurrency {a.concurrency}")
    print(f"soak: after: running {m.get('sharq_num_requests_running')}, waiting {m.get('sharq_num_requests_waiting')}, "
          f"KV blocks used {m.get('sharq_kv_blocks_used')} of {m.get('sharq_kv_blocks_total')}, finished "
          f"{m.get('sharq_requests_finished_total')}, cancelled {m.get('sharq_requests_cancelled_total')}, "
          f"preemptions {m.get('sharq_preemptions_total')}")
    if m.get("sharq_kv_blocks_used", -1) != 0 or m.get("sharq_num_requests_running", -1) != 0:
        failures.append("KV blocks or running requests left at the end")
    for f in failures[:20]:
        print("FAIL", f)
    print(f"soak: {'PASSED' if not failures else f'FAILED ({len(failures)})'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
