#!/usr/bin/env python3
"""End-to-end tests of `sharq serve` on stories260K, with a real HTTP client (the standard library).

Run by ctest, one case per test:  serve_e2e_test.py SHARQ_CLI MODEL_DIR CASE
Every server binds an ephemeral port, and every wait is bounded, so a hung server fails the case.
Exit status 77: skipped (the model is not there).
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

CLI, MODEL_DIR = sys.argv[1], sys.argv[2]
MODEL = os.path.join(MODEL_DIR, "stories260K.bin")
TOK = os.path.join(MODEL_DIR, "tok512.bin")
TIMEOUT = 60  # seconds: the bound of every single wait


class Server:
    def __init__(self, *args):
        self.proc = subprocess.Popen([CLI, "serve", MODEL, "--tokenizer", TOK, "--port", "0", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(TIMEOUT):
            self.proc.kill()
            raise AssertionError("the server did not start: " + "".join(self.log))

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the server did not stop after SIGTERM")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


def post(server, body, headers=None, raw=None, path="/v1/completions"):
    """(status, parsed JSON body) of a POST /v1/completions (or another path)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(server.url(path), data=data,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stream(server, body, path="/v1/completions"):
    """The SSE events (parsed) of a streaming completion, up to [DONE]."""
    req = urllib.request.Request(server.url(path), data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream"), r.headers
        for line in r:
            line = line.decode().rstrip("\n")
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return events
            events.append(json.loads(line[6:]))
    raise AssertionError("the stream ended without [DONE]")


def metrics(server):
    with urllib.request.urlopen(server.url("/metrics"), timeout=TIMEOUT) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(sharq_\w+) (\S+)$", text, re.M)}


def wait_for(cond, what):
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


def generate_cli(prompt, steps, temperature, top_p, seed):
    out = subprocess.run([CLI, "generate", MODEL, "--tokenizer", TOK, "-p", prompt, "-n", str(steps), "-t", str(temperature),
                          "--top-p", str(top_p), "--seed", str(seed)], capture_output=True, text=True, timeout=TIMEOUT,
                         check=True)
    return out.stdout


def check_equals_generate(server, prompt, max_tokens, temperature, top_p, seed):
    st, r = post(server, {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                          "seed": seed})
    assert st == 200, r
    text = r["choices"][0]["text"]
    steps = r["usage"]["prompt_tokens"] + max_tokens - 1  # generate's -n counts the prompt and samples at the last
    want = generate_cli(prompt, steps, temperature, top_p, seed)
    assert want.startswith(prompt) and want.endswith(text + "\n"), (want, text)
    # the whole generated part: what the CLI printed after the prompt
    assert want[len(prompt):] == text + "\n", (want, text)
    return r


# ---- cases

def case_completions_equal_generate():
    with Server() as s:
        r = check_equals_generate(s, "Once upon a time", 40, 0.8, 0.9, 5)
        assert r["object"] == "text_completion" and r["choices"][0]["finish_reason"] in ("stop", "length"), r
        u = r["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
        check_equals_generate(s, "Lily", 60, 0.0, 0.9, 1)  # greedy
        st, r = post(s, {"prompt": "The dog", "max_tokens": 5, "logprobs": 0, "temperature": 0})
        lp = r["choices"][0]["logprobs"]
        assert len(lp["token_logprobs"]) == r["usage"]["completion_tokens"] and all(v <= 0 for v in lp["token_logprobs"]), lp
        assert "".join(lp["tokens"]).strip() == r["choices"][0]["text"].strip(), lp
        with urllib.request.urlopen(s.url("/v1/models"), timeout=TIMEOUT) as m:
            models = json.loads(m.read())
        assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 512, models
        with urllib.request.urlopen(s.url("/health"), timeout=TIMEOUT) as h:
            assert h.status == 200
        assert s.stop() == 0


def case_stream_concatenates_to_the_non_streamed_text():
    with Server() as s:
        body = {"prompt": "Once upon a time", "max_tokens": 80, "temperature": 1.0, "top_p": 0.9, "seed": 11,
                "stream_options": {"include_usage": True}}
        st, whole = post(s, body)
        assert st == 200, whole
        events = stream(s, body)
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        assert text == whole["choices"][0]["text"], (text, whole)
        finals = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
        assert finals == [whole["choices"][0]["finish_reason"]], events[-3:]
        assert events[-1]["usage"] == whole["usage"], events[-1]
        assert len(events) > 5, "tokens arrive as separate events"
        assert s.stop() == 0


def case_concurrent_requests_get_their_own_output():
    with Server("--max-num-batched-tokens", "16") as s:
        seeds = list(range(20, 28))
        results = {}

        def one(seed):
            results[seed] = post(s, {"prompt": "A cat", "max_tokens": 50, "temperature": 1.0, "top_p": 0.9, "seed": seed})
        threads = [threading.Thread(target=one, args=(k,)) for k in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        texts = set()
        for seed in seeds:
            st, r = results[seed]
            assert st == 200, r
            text = r["choices"][0]["text"]
            texts.add(text)
            want = generate_cli("A cat", r["usage"]["prompt_tokens"] + 49, 1.0, 0.9, seed)
            assert want == "A cat" + text + "\n", (seed, want, text)
        assert len(texts) > 1
        assert s.stop() == 0


def case_full_queue_answers_429():
    with Server("--max-num-seqs", "1", "--max-queue", "1", "--debug-step-delay-ms", "20") as s:
        body = {"prompt": "Once", "max_tokens": 40, "ignore_eos": True, "temperature": 0}
        out = []
        a = threading.Thread(target=lambda: out.append(post(s, body)))
        a.start()
        wait_for(lambda: metrics(s)["sharq_num_requests_running"] == 1, "the first request to run")
        b = threading.Thread(target=lambda: out.append(post(s, body)))
        b.start()
        wait_for(lambda: metrics(s)["sharq_num_requests_waiting"] == 1, "the second request to wait")
        st, r = post(s, body)
        assert st == 429 and r["error"]["type"] and "queue is full" in r["error"]["message"], (st, r)
        a.join(TIMEOUT)
        b.join(TIMEOUT)
        assert [st for st, _ in out] == [200, 200], out
        assert metrics(s)["sharq_requests_rejected_total"] == 1
        assert s.stop() == 0


def case_bad_requests_answer_400():
    with Server() as s:
        cases = [
            (dict(raw=b"{not json"), 400, "not valid JSON"),
            (dict(raw=b"[1, 2]"), 400, "must be a JSON object"),
            (dict(raw=b'{"prompt": "x", "temperature": 1e400}'), 400, "not valid JSON"),  # was a 500 (review)
            (dict(body={"prompt": "x", "max_tokens": "ten"}), 400, "'max_tokens' must be an integer"),
            (dict(body={"prompt": "x", "max_tokens": -3}), 400, "'max_tokens' must be at least 1"),
            (dict(body={"prompt": "x", "max_tokens": 0}), 400, "'max_tokens' must be at least 1"),
            (dict(body={"prompt": 12}), 400, "'prompt' must be"),
            (dict(body={"max_tokens": 3}), 400, "'prompt' is required"),
            (dict(body={"prompt": "x", "temperature": "hot"}), 400, "'temperature' must be a number"),
            (dict(body={"prompt": "x", "temperature": 1e39}), 400, "'temperature' must be in [0, 1e6], got 1e+39"),
            (dict(raw=b'{"prompt": "x", "max_tokens": 4, "max_tokens": 5}'), 400, "the key \"max_tokens\" appears twice"),
            (dict(body={"prompt": "x", "top_p": 0}), 400, "'top_p' must be in (0, 1]"),
            (dict(body={"prompt": "x", "stream": "yes"}), 400, "'stream' must be a boolean"),
            (dict(body={"prompt": "x", "n": 2}), 400, "only n = 1"),
            (dict(body={"prompt": [5, 100000]}), 400, "outside the vocabulary"),
            (dict(body={"prompt": "x", "model": "gpt-4"}), 404, "does not exist"),
            # a prompt longer than the context: the lengths are named
            (dict(body={"prompt": [1] + [300] * 600, "max_tokens": 4}), 400,
             "maximum context length is 512 tokens. However, you requested 605 tokens (601 in the prompt, 4 in the completion)"),
            (dict(body={"prompt": "x", "max_tokens": 600}), 400, "maximum context length is 512 tokens"),
            # a max_tokens whose sum with the prompt overflows int64 (it used to abort the server)
            (dict(body={"prompt": "a", "max_tokens": 9223372036854775806}), 400, "maximum context length is 512 tokens"),
            (dict(body={"prompt": "a", "max_tokens": 2 ** 63}), 400, "maximum context length is 512 tokens"),
            # sampling extras that would change the result: refused, not ignored
            (dict(body={"prompt": "x", "top_k": 1}), 400, "'top_k' 1 is not supported"),
            (dict(body={"prompt": "x", "min_p": 0.5}), 400, "'min_p' is not supported"),
            (dict(body={"prompt": "x", "repetition_penalty": 1.2}), 400, "'repetition_penalty' is not supported"),
            (dict(body={"prompt": "x", "min_tokens": 3}), 400, "'min_tokens' is not supported"),
            (dict(body={"prompt": "x", "stop_token_ids": [2]}), 400, "'stop_token_ids' is not supported"),
            (dict(body={"prompt": "x", "response_format": {"type": "json_object"}}), 400, "response_format"),
            (dict(body={"prompt": "x", "guided_json": {}}), 400, "constrained decoding"),
            # found by a probe of the HTTP layer: these were accepted and ignored
            (dict(body={"prompt": "x", "logprobs": 5}), 400, "'logprobs' 5 is not supported"),
            (dict(body={"prompt": "x", "user": 5}), 400, "'user' must be a string"),
        ]
        for kw, status, words in cases:
            st, r = post(s, kw.get("body"), raw=kw.get("raw"))
            assert st == status, (kw, st, r)
            e = r["error"]
            assert words in e["message"] and e["code"] == status and set(e) == {"message", "type", "param", "code"}, (kw, r)
        # the HTTP layer's own refusals carry the same JSON error object: a chunked body (refused before
        # any of it is read: its length cannot be checked against the limit first), a 100 KB path
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=TIMEOUT)
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        conn.send(b"e\r\n{\"prompt\": \"x\"}\r\n0\r\n\r\n")
        resp = conn.getresponse()
        e = json.loads(resp.read())["error"]
        assert resp.status == 411 and e["code"] == 411 and "Content-Length" in e["message"], (resp.status, e)
        conn.close()
        try:
            urllib.request.urlopen(s.url("/" + "a" * 100000), timeout=TIMEOUT)
            raise AssertionError("a 100 KB path answered 2xx")
        except urllib.error.HTTPError as err:
            assert err.code == 414 and json.loads(err.read())["error"]["code"] == 414, err.code
        # a known path with the other method: 405 naming the method it takes; an unknown path: 404
        for method, path, status, allow in (("GET", "/v1/completions", 405, "POST"), ("POST", "/health", 405, "GET"),
                                            ("GET", "/v1/nothing", 404, None)):
            req = urllib.request.Request(s.url(path), method=method, data=b"{}" if method == "POST" else None)
            try:
                urllib.request.urlopen(req, timeout=TIMEOUT)
                raise AssertionError((method, path, "answered 2xx"))
            except urllib.error.HTTPError as e:
                body = json.loads(e.read())
                assert e.code == status and body["error"]["code"] == status, (method, path, e.code, body)
                assert e.headers.get("Allow") == allow, (method, path, dict(e.headers))
        # the values that change nothing are accepted, and the server still serves
        st, r = post(s, {"prompt": "x", "max_tokens": 2, "top_k": -1, "min_p": 0, "repetition_penalty": 1,
                         "min_tokens": 0, "stop_token_ids": [], "response_format": {"type": "text"}})
        assert st == 200 and r["usage"]["completion_tokens"] >= 1, (st, r)
        assert s.stop() == 0


def case_cancelled_stream_frees_its_kv_blocks():
    with Server("--debug-step-delay-ms", "5") as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=TIMEOUT)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 400,
                                                            "ignore_eos": True, "stream": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        got = 0
        while got < 3:
            if resp.readline().startswith(b"data: "):
                got += 1
        m = metrics(s)
        assert m["sharq_kv_blocks_used"] > 0 and m["sharq_num_requests_running"] == 1, m
        conn.sock.shutdown(2)
        conn.close()
        wait_for(lambda: metrics(s)["sharq_requests_cancelled_total"] == 1, "the request to be cancelled")
        m = metrics(s)
        assert m["sharq_kv_blocks_used"] == 0 and m["sharq_num_requests_running"] == 0, m
        assert m["sharq_generation_tokens_total"] < 400, m
        assert s.stop() == 0


def case_sigterm_drains_in_flight_requests():
    with Server("--debug-step-delay-ms", "10") as s:
        out = []
        t = threading.Thread(target=lambda: out.append(post(s, {"prompt": "Once", "max_tokens": 60, "ignore_eos": True})))
        t.start()
        wait_for(lambda: metrics(s)["sharq_num_requests_running"] == 1, "the request to run")
        s.proc.send_signal(signal.SIGTERM)
        t.join(TIMEOUT)
        assert out and out[0][0] == 200 and out[0][1]["usage"]["completion_tokens"] == 60, out
        assert out[0][1]["choices"][0]["finish_reason"] == "length"
        assert s.proc.wait(TIMEOUT) == 0
        assert any("draining" in line for line in s.log), s.log


def case_api_key_is_required():
    with Server("--api-key", "sekrit") as s:
        body = {"prompt": "x", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            st, r = post(s, body, headers)
            assert st == 401 and r["error"]["type"] == "authentication_error", (headers, st, r)
        st, r = post(s, body, {"Authorization": "Bearer sekrit"})
        assert st == 200, r
        with urllib.request.urlopen(s.url("/health"), timeout=TIMEOUT) as h:
            assert h.status == 200
        assert s.stop() == 0


def case_ignore_eos_and_token_id_prompts():
    with Server() as s:
        # token ids: BOS alone is what an empty text prompt becomes
        _, a = post(s, {"prompt": "", "max_tokens": 20, "temperature": 0})
        _, b = post(s, {"prompt": [1], "max_tokens": 20, "temperature": 0})
        _, c = post(s, {"prompt": [[1]], "max_tokens": 20, "temperature": 0})
        assert a["choices"][0]["text"] == b["choices"][0]["text"] == c["choices"][0]["text"], (a, b, c)
        assert b["usage"]["prompt_tokens"] == 1
        _, d = post(s, {"prompt": [1, 300, 301, 302], "max_tokens": 5})
        assert d["usage"]["prompt_tokens"] == 4 and d["usage"]["completion_tokens"] >= 1, d
        # logprobs after BOS alone: the first piece's leading space is not in the text, nor in tokens[0],
        # so every text_offset points at its token (non-streamed and streamed alike)
        for body in ({"prompt": [1], "max_tokens": 6, "temperature": 0, "logprobs": 0},
                     {"prompt": "Once", "max_tokens": 6, "temperature": 0, "logprobs": 0}):
            _, r = post(s, body)
            text, lp = r["choices"][0]["text"], r["choices"][0]["logprobs"]
            assert "".join(lp["tokens"]) == text, (text, lp)
            for tok, off in zip(lp["tokens"], lp["text_offset"]):
                assert text[off:off + len(tok)] == tok, (text, lp)
            ev = stream(s, {**body, "stream": True})
            toks = [t for e in ev if e["choices"] and e["choices"][0]["logprobs"] for t in e["choices"][0]["logprobs"]["tokens"]]
            offs = [o for e in ev if e["choices"] and e["choices"][0]["logprobs"] for o in e["choices"][0]["logprobs"]["text_offset"]]
            assert toks == lp["tokens"] and offs == lp["text_offset"], (toks, offs, lp)
        for seed in range(1, 60):
            body = {"prompt": "The end", "max_tokens": 300, "temperature": 1.0, "seed": seed}
            _, r = post(s, body)
            if r["choices"][0]["finish_reason"] != "stop":
                continue
            _, r2 = post(s, {**body, "ignore_eos": True})
            assert r2["choices"][0]["finish_reason"] == "length" and r2["usage"]["completion_tokens"] == 300, r2
            assert r2["choices"][0]["text"].startswith(r["choices"][0]["text"])
            break
        else:
            raise AssertionError("no seed stopped at EOS")
        assert s.stop() == 0


def case_500_concurrent_streams():
    # slow steps keep every stream open at once: 128 run, the rest wait in the queue
    with Server("--max-num-seqs", "128", "--max-queue", "512", "--debug-step-delay-ms", "100") as s:
        n = 500
        ok = []
        errors = []
        peak = [0]
        done = threading.Event()

        def watch():
            while not done.is_set():
                m = metrics(s)
                peak[0] = max(peak[0], m["sharq_num_requests_running"] + m["sharq_num_requests_waiting"])
                time.sleep(0.02)
        watcher = threading.Thread(target=watch)
        watcher.start()

        start = threading.Barrier(n)  # every client connects at once, not as its thread happens to start

        def one(i):
            try:
                start.wait(TIMEOUT)
                ev = stream(s, {"prompt": "Once", "max_tokens": 16, "temperature": 0})
                ok.append("".join(e["choices"][0]["text"] for e in ev if e["choices"]))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        done.set()
        watcher.join(TIMEOUT)
        assert not errors, errors[:3]
        assert peak[0] >= 250, f"only {peak[0]} requests were in the server at once"
        assert len(ok) == n and len(set(ok)) == 1, (len(ok), set(ok))
        m = metrics(s)
        assert m["sharq_kv_blocks_used"] == 0 and m["sharq_requests_finished_total"] == n, m
        assert s.stop() == 0


CHAT_TEMPLATE = """{%- for m in messages %}<|{{ m.role }}|>{{ m.content }}
{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"""


def case_chat_completions_follow_the_template():
    """The chat endpoint renders the template, and its answer is the completion of the rendered
    prompt's ids (`sharq template --ids`); streamed deltas concatenate to it; a server without a
    template, or a malformed conversation, answers 400."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tmpl = os.path.join(d, "chat.jinja")
        with open(tmpl, "w") as f:
            f.write(CHAT_TEMPLATE)
        msgs = [{"role": "system", "content": None}, {"role": "user", "content": [{"type": "text", "text": "Once upon"},
                                                                                {"type": "text", "text": " a time"}]}]
        norm = [{"role": "system", "content": ""}, {"role": "user", "content": "Once upon a time"}]
        mfile = os.path.join(d, "m.json")
        with open(mfile, "w") as f:
            json.dump(norm, f)
        out = subprocess.run([CLI, "template", tmpl, "--tokenizer", TOK, "--messages", mfile, "--ids"], capture_output=True,
                             text=True, timeout=TIMEOUT, check=True)
        ids = json.loads(out.stdout)["ids"]
        with Server("--chat-template", tmpl) as s:
            body = {"messages": msgs, "max_tokens": 20, "temperature": 0, "seed": 3}
            st, r = post(s, body, path="/v1/chat/completions")
            assert st == 200, r
            assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-"), r
            msg = r["choices"][0]["message"]
            assert msg["role"] == "assistant", msg
            assert r["usage"]["prompt_tokens"] == len(ids), (r["usage"], len(ids))
            st, c = post(s, {"prompt": ids, "max_tokens": 20, "temperature": 0, "seed": 3})
            assert st == 200, c
            assert (msg["content"] or "") == c["choices"][0]["text"], (msg, c)
            ev = stream(s, body, path="/v1/chat/completions")
            assert ev[0]["choices"][0]["delta"].get("role") == "assistant", ev[0]
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in ev if e["choices"])
            assert text == (msg["content"] or ""), (text, msg)
            assert ev[-1]["choices"][0]["finish_reason"] in ("stop", "length"), ev[-1]
            for bad in ({"messages": []}, {"messages": "hi"}, {"messages": [{"role": "user", "content": 3}]},
                        {"messages": norm, "top_logprobs": 2}, {"messages": norm, "max_tokens": 0},
                        {"messages": norm, "tool_choice": "required"}, {"messages": norm, "tool_choice": "bogus"},
                        {"messages": norm, "max_completion_tokens": 9223372036854775800},
                        {"messages": [{"role": "alien", "content": "x"}]}, {"messages": norm, "tools": [{"type": "function"}]},
                        {"messages": norm, "tools": 5}, {"messages": norm, "parallel_tool_calls": 5}):
                st, r = post(s, bad, path="/v1/chat/completions")
                assert st == 400 and r["error"]["message"], (bad, st, r)
            # a message with 100k keys: refused at once (an ordered parse of it took 37 s), then still serving
            wide = dict(norm[0], **{"k%d" % i: i for i in range(100000)})
            t0 = time.monotonic()
            st, r = post(s, {"messages": [wide]}, path="/v1/chat/completions")
            assert st == 400 and "more than 4096 keys" in r["error"]["message"], (st, r)
            assert time.monotonic() - t0 < 5, time.monotonic() - t0
            st, r = post(s, {"messages": norm, "max_tokens": 2}, path="/v1/chat/completions")
            assert st == 200, (st, r)
            assert s.stop() == 0
        with Server() as s:  # stories260K has no chat template of its own
            st, r = post(s, {"messages": norm}, path="/v1/chat/completions")
            assert st == 400 and "chat template" in r["error"]["message"], (st, r)
            assert s.stop() == 0


def case_bad_chat_templates_stop_the_start():
    """--chat-template that is missing, or a template that does not parse, is an error at start-up
    naming the flag or the file, with a non-zero exit; the server never listens."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "bad.jinja")
        with open(bad, "w") as f:
            f.write("{% for m in messages %}{{ m.content }}")  # no endfor
        for arg, want in ((os.path.join(d, "missing.jinja"), "--chat-template"), (bad, "bad.jinja")):
            r = subprocess.run([CLI, "serve", MODEL, "--tokenizer", TOK, "--port", "0", "--chat-template", arg],
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert r.returncode != 0 and want in r.stderr and "serving" not in r.stderr, (arg, r.returncode, r.stderr)


def case_synthetic_model_flags_are_checked():
    """--synthetic replaces MODEL and needs --device cuda; either mistake, or neither MODEL nor
    --synthetic, is a usage error naming the flag, with a non-zero exit and no server."""
    for args, want in ((["--synthetic", "llama3.1-8b"], "--device cuda"),
                       ([MODEL, "--synthetic", "llama3.1-8b", "--device", "cuda"], "replaces MODEL"),
                       ([], "MODEL is required"),
                       (["--synthetic", "llama9-1t", "--device", "cuda"], "--synthetic")):
        r = subprocess.run([CLI, "serve", "--port", "0"] + args, capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode != 0 and want in r.stderr and "serving" not in r.stderr, (args, r.returncode, r.stderr)


def case_bench_serve_reports_the_load():
    """`sharq bench serve` drives a live server: every request completes with exactly its output
    length (ignore_eos), the report and the CSV row say so; a non-loopback URL is refused."""
    import csv
    import tempfile
    with Server() as s, tempfile.TemporaryDirectory() as d:
        out_csv = os.path.join(d, "b.csv")
        r = subprocess.run([CLI, "bench", "serve", "--url", f"http://127.0.0.1:{s.port}", "--num-prompts", "12",
                            "--input-len", "32", "--output-len", "16", "--max-concurrency", "4", "--label", "e2e",
                            "--csv", out_csv], capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "completed 12 / 12" in r.stdout, r.stdout
        for metric in ("TTFT", "TPOT", "ITL", "E2E"):
            assert re.search(rf"^{metric}\s+\d", r.stdout, re.M), r.stdout
        with open(out_csv) as f:
            row = next(csv.DictReader(f))
        assert row["label"] == "e2e" and row["completed"] == "12", row
        assert row["output_tokens"] == str(12 * 16) and row["input_tokens"] == str(12 * 32), row
        assert float(row["output_tok_per_s"]) > 0 and float(row["ttft_p50_ms"]) > 0, row
        m = metrics(s)
        assert m["sharq_generation_tokens_total"] == 12 * 16 and m["sharq_kv_blocks_used"] == 0, m
        r = subprocess.run([CLI, "bench", "serve", "--url", "http://192.0.2.1:80"], capture_output=True, text=True,
                           timeout=TIMEOUT)
        assert r.returncode == 1 and "this machine only" in r.stderr, r.stderr
        assert s.stop() == 0


if __name__ == "__main__":
    if not os.path.exists(MODEL):
        print(f"skipped: {MODEL} not found")
        sys.exit(77)
    globals()["case_" + sys.argv[3]]()
    print("ok")
