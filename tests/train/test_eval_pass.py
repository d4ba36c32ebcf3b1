"""The evaluator's one batched pass: the same scores as scoring each benchmark alone, one forward
call per batch across benchmarks, bits per byte of the correct answer, reuse across models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from tests.evaluate.conftest import WORDS, BagModel, word_tokenizer
from train.eval import Evaluator, evaluate, load_benchmark, loglikelihoods, mc_requests, score_mc, score_val

ITEMS = [{"question": "What is the capital of paris ?", "choices": ["france", "italy", "spain"], "answer": 0},
         {"question": "What is the capital of rome ?", "choices": ["france", "italy"], "answer": 1},
         {"question": "What is the capital of berlin ?", "choices": ["germany", "a very long answer"], "answer": 0}]


def _mc(tmp_path):
    """A bare lm-eval style file: multiple choice, prompt "Question: ...\\nAnswer:", choices after a space."""
    f = tmp_path / "caps.jsonl"
    f.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    return f


def _val(tmp_path):
    d = tmp_path / "val"
    d.mkdir()
    (d / "benchmark.yaml").write_text(yaml.safe_dump({"name": "val", "type": "val_loss", "seq_len": 4}))
    (d / "data.jsonl").write_text(json.dumps({"text": "the capital of paris is france ."}) + "\n"
                                  + json.dumps({"text": "one two three"}) + "\n")
    return d


def _model(seed: int = 0) -> BagModel:
    m = BagModel(len(WORDS))
    g = torch.Generator().manual_seed(seed)
    m.B = torch.randn(len(WORDS), len(WORDS), generator=g)
    return m


def test_one_pass_scores_like_each_benchmark_alone(tmp_path):
    tok = word_tokenizer()
    mc, val = _mc(tmp_path), _val(tmp_path)
    m = _model()
    got = Evaluator(tok, [mc, val], batch_size=4)(m)
    spec, items = load_benchmark(mc)
    alone_mc = score_mc(m, tok, spec, items, batch_size=1)
    spec_v, items_v = load_benchmark(val)
    alone_val = score_val(m, tok, spec_v, items_v, batch_size=1)
    assert got["caps"]["score"] == alone_mc["score"] and got["caps"]["bpb"] == pytest.approx(alone_mc["bpb"], abs=1e-6)
    assert got["val"]["score"] == pytest.approx(alone_val["score"], abs=1e-6) and got["val"]["n"] == alone_val["n"]
    # 7 choices + the loss windows in batches of 4 across both benchmarks: one forward call per batch
    m.calls = 0
    Evaluator(tok, [mc, val], batch_size=4)(m)
    assert m.calls == math.ceil((7 + alone_val["n"]) / 4)


def test_bits_per_byte_of_the_correct_answer(tmp_path):
    tok = word_tokenizer()
    d = _mc(tmp_path)
    m = _model(1)
    r = evaluate(m, tok, [d])
    spec, items = load_benchmark(d)
    reqs = mc_requests(tok, spec, items)
    ll = loglikelihoods(m, reqs)
    k, want = 0, []
    for it in items:
        want.append(-ll[k + it["answer"]] / math.log(2) / len((" " + it["choices"][it["answer"]]).encode()))
        k += len(it["choices"])
    assert r["caps"]["bpb"] == pytest.approx(sum(want) / len(want), rel=1e-6)
    assert r["caps_bpb"]["score"] == r["caps"]["bpb"] and r["caps_bpb"]["higher_is_better"] is False


def test_an_evaluator_serves_many_models(tmp_path):
    tok = word_tokenizer()
    d = _mc(tmp_path)
    ev = Evaluator(tok, [d])
    for seed in (2, 3):
        m = _model(seed)
        assert {k: v["score"] for k, v in ev(m).items()} == {k: v["score"] for k, v in evaluate(m, tok, [d]).items()}
