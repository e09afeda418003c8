"""The CPU runtime on the real stories260K checkpoint (../shared/models/stories260K)."""
import json
import subprocess

import numpy as np
import pytest

import sharq
from conftest import MODEL_DIR, STORY


@pytest.fixture(scope="module")
def model(model_path):
    return sharq.Model(model_path)  # scheme fp16


def test_config_and_tokenizer(model):
    assert model.scheme == "fp16"
    c = model.config
    assert (c["hidden_size"], c["num_layers"], c["num_heads"], c["num_kv_heads"], c["vocab_size"]) == (64, 5, 8, 4, 512)
    ids = model.tokenize("Once upon a time")
    assert ids.dtype == np.int32 and ids[0] == model.bos_id == 1 and len(ids) > 2
    assert model.detokenize(ids, skip_special=True).strip() == "Once upon a time"
    assert len(model.tokenize(STORY)) == 127


def test_logits_shape_and_determinism(model):
    ids = model.tokenize(STORY)[:40]
    a = model.logits(ids)
    assert a.shape == (40, 512) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(model.logits(ids.astype(np.int64)), a)
    # causal: the logits of a prefix are the prefix of the logits
    np.testing.assert_array_equal(model.logits(np.ascontiguousarray(ids[:10])), a[:10])
    # the model predicts its own text better than chance (vocab 512: NLL ln 512 = 6.24)
    lp = a - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True)) - a.max(1, keepdims=True)
    nll = -lp[np.arange(39), ids[1:]].mean()
    assert nll < 3.0


def test_logits_errors(model):
    with pytest.raises(TypeError, match="'token_ids' must have dtype int32 or int64"):
        model.logits(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="'token_ids' must be a 1-D array"):
        model.logits(np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="at least one token"):
        model.logits(np.zeros(0, np.int32))
    with pytest.raises(ValueError):  # outside the vocabulary: the step API's own check
        model.logits(np.array([1, 9999], np.int32))


def test_quantized_scheme_is_close_to_fp16(model, model_path):
    ids = model.tokenize(STORY)[:64]
    ref = model.logits(ids)
    q = sharq.Model(model_path, scheme="sharq")
    assert q.scheme == "sharq"
    got = q.logits(ids)
    assert not np.array_equal(got, ref)
    assert np.mean(got.argmax(1) == ref.argmax(1)) > 0.8


def test_perplexity(model):
    r = model.perplexity(STORY, ctx=32)
    assert r["scheme"] == "fp16" and r["windows"] == 3 and r["predicted"] == 93 and r["tokens"] == 127
    assert np.isfinite(r["ppl"]) and 1.0 < r["ppl"] < 20.0
    assert r["ppl"] == pytest.approx(np.exp(r["nll"]), rel=1e-12)
    # the same windows by hand from logits()
    ids = model.tokenize(STORY)
    nll = 0.0
    for w in range(3):
        win = np.ascontiguousarray(ids[32 * w: 32 * (w + 1)])
        a = model.logits(win).astype(np.float64)
        lse = np.log(np.exp(a - a.max(1, keepdims=True)).sum(1)) + a.max(1)
        nll += (lse[:-1] - a[np.arange(31), win[1:]]).sum()
    assert r["nll"] == pytest.approx(nll / 93, rel=1e-6)
    with pytest.raises(ValueError, match="fewer than one window"):
        model.perplexity("Once upon a time", ctx=32)


def test_perplexity_matches_cli(model, model_path, cli, tmp_path):
    data = tmp_path / "story.txt"
    data.write_text(STORY)
    out = subprocess.run([cli, "ppl", model_path, "--data", str(data), "--ctx", "32", "--schemes", "fp16",
                          "--reference", "fp16", "--json", "-q"], check=True, capture_output=True, text=True).stdout
    row = json.loads(out)["rows"][0]
    r = model.perplexity(STORY, ctx=32)
    assert row["scheme"] == "fp16"
    assert r["ppl"] == pytest.approx(row["ppl"], rel=1e-4)


def test_generate(model, model_path):
    greedy = model.generate("", steps=256)
    reference = (MODEL_DIR / "REFERENCE_GREEDY.txt").read_text()
    fp32 = sharq.Model(model_path, scheme="fp32").generate("", steps=256)
    assert fp32.strip() == reference.strip()  # the published llama2.c output (fp32 forward, greedy)
    assert len(greedy) > 100
    a = model.generate("Once upon a time", steps=60, seed=7, temperature=0.9)
    b = model.generate("Once upon a time", steps=60, seed=7, temperature=0.9)
    c = model.generate("Once upon a time", steps=60, seed=8, temperature=0.9)
    assert a == b and a.startswith("Once upon a time") and a != c
    r = model.generate_ids("Once upon a time", steps=30)
    # llama2.c `run`: `steps` positions are fed (prompt included); the last one's prediction is printed too
    assert len(r["prompt_ids"]) + len(r["generated_ids"]) == 30 + 1
    assert r["text"] == model.generate("Once upon a time", steps=30)
    with pytest.raises(ValueError):
        model.generate("x", steps=10, temperature=0.5, top_p=0.0)


def test_bad_model_arguments(model_path, tmp_path):
    with pytest.raises(ValueError, match="unknown scheme"):
        sharq.Model(model_path, scheme="int3")
    with pytest.raises(RuntimeError):
        sharq.Model(str(tmp_path / "missing.bin"))
