"""The model and its HF export: transformers loads the folder and computes the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from train.export import write_hf
from train.model import PRESETS, Transformer, load_for_eval, model_args


def small(**kw):
    return model_args("tiny", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=97, **kw)


def test_presets_and_shapes():
    assert {"tiny", "125m", "350m", "1b"} <= set(PRESETS)
    a = model_args("tiny", vocab_size=8192)
    m = Transformer(a)
    assert 2e6 < m.num_params() < 10e6  # "a few M params"
    x = torch.randint(0, 8192, (2, 16))
    assert m(x).shape == (2, 16, 8192)
    loss = m(x[:, :-1], x[:, 1:])
    assert loss.ndim == 0 and loss.item() == pytest.approx(15 * 2 * torch.log(torch.tensor(8192.0)).item(), rel=0.05)
    with pytest.raises(ValueError, match="n_kv_heads"):
        model_args("tiny", n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        model_args("7b")


def test_causal():
    torch.manual_seed(0)
    m = Transformer(small()).eval()
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 97
    with torch.no_grad():
        assert torch.equal(m(x)[0, :8], m(y)[0, :8])
        assert not torch.allclose(m(x)[0, 8:], m(y)[0, 8:])


@pytest.mark.parametrize("tied", [True, False])
def test_export_matches_transformers(tmp_path, tied):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    a = small(tie_embeddings=tied, rope_theta=50000.0)
    m = Transformer(a).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped norm weight would show
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    out = write_hf(tmp_path / "hf", m.state_dict(), a)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == 50000.0 and cfg["tie_word_embeddings"] is tied
    hf = transformers.LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        ours, theirs = m(x), hf(x).logits
        back, tok = load_for_eval(out)
        again = back(x)
    assert tok is None
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(again, ours, atol=0, rtol=0)
    # a broken export must not pass: swap q and k heads' order and the logits move
    sd = m.state_dict()
    sd["layers.0.attn.wqkv.weight"] = sd["layers.0.attn.wqkv.weight"].flip(0)
    write_hf(tmp_path / "bad", sd, a)
    bad = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "bad"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(bad(x).logits, ours, atol=1e-3)


def test_load_for_eval_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_for_eval(tmp_path)
