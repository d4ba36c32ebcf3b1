"""Scoring: multiple choice by log-likelihood, normalisation, greedy exact match, loss, file formats."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from train.eval import BenchmarkError, evaluate, greedy, load_benchmark, loglikelihoods

CAPITALS = {"paris": "france", "rome": "italy", "madrid": "spain", "berlin": "germany"}


def _bench(tmp_path, name, spec, items):
    d = tmp_path / name
    d.mkdir()
    (d / "benchmark.yaml").write_text(yaml.safe_dump({"name": name, **spec}))
    (d / "data.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return d


def _mc_items():
    items = []
    countries = list(CAPITALS.values())
    for k, (city, country) in enumerate(CAPITALS.items()):
        choices = countries[k:] + countries[:k]  # the right one moves around
        choices = choices[1:] + choices[:1] if k % 2 else choices
        items.append({"question": f"What is the capital of {city} ?", "choices": choices, "answer": choices.index(country)})
    return items


MC = {"type": "mc_loglik", "prompt": "Question: {question}\nAnswer:", "choice_prefix": " "}


def test_mc_picks_the_answer_the_model_prefers(tmp_path, tok, bag, new_bag):
    d = _bench(tmp_path, "caps", MC, _mc_items())
    for city, country in CAPITALS.items():
        bag.prefer(city, country)
    r = evaluate(bag, tok, [d], batch_size=3)["caps"]
    assert r["score"] == 1.0 and r["n"] == 4 and r["higher_is_better"]

    wrong = new_bag()  # prefers the next country in the list: always wrong
    countries = list(CAPITALS.values())
    for i, city in enumerate(CAPITALS):
        wrong.prefer(city, countries[(i + 1) % 4])
    assert evaluate(wrong, tok, [d])["caps"]["score"] == 0.0


def test_loglikelihood_matches_a_direct_computation_and_ignores_batching(tok, bag):
    bag.prefer("paris", "france", 3.0).prefer("france", "one", 1.5)
    reqs = [([0, 4, 5, 12], [16, 27]), ([0, 12], [16]), ([0, 4, 5, 6, 7, 8, 12, 9], [17, 27, 28])]
    one = loglikelihoods(bag, reqs, batch_size=1)
    many = loglikelihoods(bag, reqs, batch_size=8)
    assert one == pytest.approx(many, abs=1e-6)
    ctx, cont = reqs[0]
    full = torch.tensor([ctx + cont])
    lp = torch.log_softmax(bag(full[:, :-1]), -1)[0]
    direct = sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
    assert one[0] == pytest.approx(direct, abs=1e-6)


@pytest.mark.parametrize("norm,expect", [("none", 1), ("length", 0), ("bytes", 0)])
def test_length_normalisation_options(tmp_path, tok, bag, norm, expect):
    # the long choice has a higher log-prob per token and per byte, the short one a higher sum
    bag.prefer("x", "a", 1.0).prefer("x", "very", 1.0).prefer("x", "long", 1.0).prefer("x", "answer", 1.0)
    items = [{"question": "x", "choices": ["a very long answer", "y"], "answer": 0}]
    d = _bench(tmp_path, f"len_{norm}", {**MC, "prompt": "{question}", "normalisation": norm}, items)
    r = evaluate(bag, tok, [d])[f"len_{norm}"]
    assert r["score"] == float(expect == 0)
    assert r["metric"] == f"acc({norm})"


def test_bytes_and_length_normalisation_can_disagree(tmp_path, tok, bag):
    # choice A: one token of 6 bytes (" three"), choice B: two tokens of 2 bytes each (" x y")
    bag.prefer("z", "x", 2.0).prefer("z", "y", 2.0).prefer("z", "three", 1.0)
    items = [{"question": "z", "choices": ["three", "x y"], "answer": 0}]
    lp = {}
    for norm in ("length", "bytes"):
        d = _bench(tmp_path, f"d_{norm}", {**MC, "prompt": "{question}", "normalisation": norm}, items)
        lp[norm] = evaluate(bag, tok, [d])[f"d_{norm}"]["score"]
    assert lp == {"length": 0.0, "bytes": 1.0}


def test_greedy_exact_match_stops_and_matches(tmp_path, tok, bag, words):
    for city, country in CAPITALS.items():
        bag.prefer(city, country, 10.0).prefer(country, "\n", 30.0)
    items = [{"question": f"What is the capital of {c} ?", "answer": a} for c, a in CAPITALS.items()]
    items.append({"question": "What is the capital of paris ?", "answer": "italy"})  # wrong key: must not match
    d = _bench(tmp_path, "gen", {"type": "gen_exact_match", "prompt": "Question: {question}\nAnswer:",
                                 "max_new_tokens": 5, "stop": ["\n"]}, items)
    r = evaluate(bag, tok, [d], batch_size=2)["gen"]
    assert r["score"] == pytest.approx(4 / 5) and r["n"] == 5
    assert r["examples"][0]["gen"].strip() == "france"
    # the stop token ends generation early: one forward per new token, no more
    ids = [tok.encode("Question: What is the capital of rome ?\nAnswer:").ids]
    out = greedy(bag, ids, max_new_tokens=5, stop_ids={words.index("\n")})
    assert [words[i] for i in out[0]] == ["italy", "\n"]


def test_greedy_batched_equals_one_by_one(tok, bag):
    bag.prefer("paris", "one").prefer("one", "two").prefer("two", "three").prefer("rome", "x").prefer("x", "y")
    prompts = [tok.encode(s).ids for s in ["paris", "the capital of rome", "What is paris ?", "rome"]]
    assert greedy(bag, prompts, 3, batch_size=4) == [greedy(bag, [p], 3)[0] for p in prompts]


def test_val_loss_of_a_uniform_model_is_log_vocab(tmp_path, tok, bag, words):
    items = [{"text": "the capital of france is paris ."}, {"text": "one two three " * 40}]
    d = _bench(tmp_path, "val", {"type": "val_loss", "seq_len": 16}, items)
    r = evaluate(bag, tok, [d])["val"]
    assert r["score"] == pytest.approx(math.log(len(words)), rel=1e-5)
    assert not r["higher_is_better"] and r["n"] > 2


def test_val_loss_over_ds_shards(tmp_path, bag, tok, words):
    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    np.arange(1000, dtype=np.uint16).__mod__(len(words)).astype(np.uint16).tofile(src / "000_src.ds")
    d = _bench(tmp_path, "dsval", {"type": "val_loss", "ds": str(src), "windows": 4, "seq_len": 32}, [])
    r = evaluate(bag, tok, [d])["dsval"]
    assert r["n"] == 4 and r["tokens"] == 4 * 32
    assert r["score"] == pytest.approx(math.log(len(words)), rel=1e-5)


def test_lm_eval_style_file_with_letter_answers(tmp_path, tok, bag):
    f = tmp_path / "user.jsonl"
    f.write_text(json.dumps({"question": "What is the capital of rome ?", "choices": ["france", "italy"], "answer": "B"}) + "\n")
    bag.prefer("rome", "italy")
    spec, items = load_benchmark(f)
    assert spec["type"] == "mc_loglik" and items[0]["answer"] == 1
    assert evaluate(bag, tok, [f])["user"]["score"] == 1.0


@pytest.mark.parametrize("row,field", [
    ({"question": "q", "choices": ["a", "b"], "answer": 5}, "answer"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "choices"),
    ({"choices": ["a", "b"], "answer": 0}, "question"),
])
def test_bad_items_name_file_and_field(tmp_path, row, field):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(BenchmarkError) as e:
        load_benchmark(f)
    assert "bad.jsonl" in str(e.value) and f"'{field}'" in str(e.value)


def test_unknown_type_and_missing_folder(tmp_path):
    d = _bench(tmp_path, "odd", {"type": "bleu"}, [{"question": "q", "answer": "a"}])
    with pytest.raises(BenchmarkError, match="'type'"):
        load_benchmark(d)
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(tmp_path / "nowhere")


def test_real_transformer_is_deterministic(tmp_path, tok, words):
    from train.model import Transformer, model_args

    torch.manual_seed(0)
    m = Transformer(model_args("tiny", dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=len(words), max_seq_len=64))
    d = _bench(tmp_path, "caps", MC, _mc_items())
    g = _bench(tmp_path, "gen", {"type": "gen_exact_match", "max_new_tokens": 3}, [{"question": "paris", "answer": "france"}])
    a = evaluate(m, tok, [d, g], batch_size=2)
    b = evaluate(m, tok, [d, g], batch_size=7)
    assert {k: v["score"] for k, v in a.items()} == {k: v["score"] for k, v in b.items()}
    assert m.training  # evaluate() puts the model back in the mode it found it in
