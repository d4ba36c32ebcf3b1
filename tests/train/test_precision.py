"""train.precision fp8: which linears it converts, and one clear line where it cannot run (here: a
CPU; a card below compute capability 8.9; no torchao)."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.clihelp import cli, one_error
from train import config as config_mod
from train.model import Transformer, model_args
from train.precision import INSTALL, fp8_layers, fp8_refusal


def meta_model(preset: str, vocab: int = 32000) -> Transformer:
    with torch.device("meta"):
        return Transformer(model_args(preset, vocab_size=vocab))


def test_fp8_converts_the_blocks_large_linears_and_keeps_head_embedding_and_small_ones():
    names = fp8_layers(meta_model("1b"), 1024)
    assert len(names) == 16 * 4 and all(n.startswith("layers.") for n in names)
    assert {n.split(".", 2)[2] for n in names} == {"attn.wqkv", "attn.wo", "mlp.w13", "mlp.w2"}
    assert len(fp8_layers(meta_model("350m"), 1024)) == 24 * 4
    assert fp8_layers(meta_model("125m"), 1024) == []  # 768 wide: all bf16
    assert fp8_layers(meta_model("tiny", 512), 16) == ["layers.0.attn.wqkv", "layers.0.attn.wo", "layers.0.mlp.w13",
                                                       "layers.0.mlp.w2"] + [f"layers.{i}.{n}" for i in (1, 2, 3) for n in
                                                                             ("attn.wqkv", "attn.wo", "mlp.w13", "mlp.w2")]
    odd = meta_model("tiny", 512)  # a width that is no multiple of 16 stays bf16 whatever the threshold
    with torch.device("meta"):
        odd.layers[0].mlp.w2 = torch.nn.Linear(344, 256, bias=False)
    assert "layers.0.mlp.w2" not in fp8_layers(odd, 16)


def test_precision_fields_are_checked():
    assert config_mod.load({}).train.precision == "bf16"
    with pytest.raises(config_mod.ConfigError, match="field train.precision: 'fp16'; use bf16 or fp8"):
        config_mod.load({}, ["train.precision=fp16"])
    with pytest.raises(config_mod.ConfigError, match="field train.fp8_recipe: 'blockwise'"):
        config_mod.load({}, ["train.precision=fp8", "train.fp8_recipe=blockwise"])
    with pytest.raises(config_mod.ConfigError, match="set train.dtype to auto or bf16"):
        config_mod.load({}, ["train.precision=fp8", "train.dtype=fp32"])


def test_fp8_is_refused_on_a_cpu_an_older_card_and_without_torchao(monkeypatch):
    e = fp8_refusal("cpu", "run.yaml")
    assert "run.yaml: field train.precision: fp8 needs a CUDA GPU" in str(e) and "train.precision=bf16" in e.fix
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    e = fp8_refusal("cuda")
    assert "compute capability 8.9 or newer; NVIDIA A100-SXM4-80GB has 8.0" in str(e)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torchao.float8", None)
    e = fp8_refusal("cuda")
    assert "needs torchao, which is not installed" in str(e) and INSTALL in e.fix


def test_factory_train_fp8_on_a_cpu_is_one_line_before_torchrun(tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nscratch_dir: {tmp_path / 'scratch'}\ntrain: {{device: cpu}}\n")
    r = cli("train", str(cfg), "--nproc", "1", "--set", "train.precision=fp8")
    line = one_error(r, str(cfg), "field train.precision", "fp8 needs a CUDA GPU", "train.precision=bf16")
    assert "torchrun" not in r.stdout + r.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"], line


def test_fp8_converts_with_torchao_where_installed():
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    from train.precision import to_fp8

    model = Transformer(model_args("tiny", vocab_size=512))
    before = {n: p for n, p in model.named_parameters()}
    cfg = config_mod.load({}, ["train.precision=fp8", "train.fp8_min_features=16"])
    names = to_fp8(model, cfg, 1)
    assert len(names) == 16 and all(isinstance(model.get_submodule(n), Float8Linear) for n in names)
    assert type(model.output) is torch.nn.Linear and type(model.embed) is torch.nn.Embedding
    assert {n: p for n, p in model.named_parameters()} == before  # the same parameters, names and tensors
