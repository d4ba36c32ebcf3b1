"""Export to a HuggingFace `LlamaForCausalLM` folder that transformers 4.x and 5.x both load.

Writes config.json (with a top-level `rope_theta`), model.safetensors (fused q/k/v and gate/up split
back into HF names), and, when a tokenizer.json is known, tokenizer.json + tokenizer_config.json
(`"tokenizer_class": "PreTrainedTokenizerFast"`). To a URL (s3://, gs://) the folder is written
locally first, then uploaded with config.json last: a present config.json marks a whole export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from train import storage
from train.model import ModelArgs

EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>", "[EOS]")
BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|bos|>", "[BOS]")
PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


def hf_state_dict(sd: dict[str, torch.Tensor], a: ModelArgs) -> dict[str, torch.Tensor]:
    """Our tensor names -> HF Llama names (contiguous copies, safe for safetensors)."""
    hd = a.head_dim
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if not a.tie_embeddings:
        out["lm_head.weight"] = sd["output.weight"]
    for i in range(a.n_layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        wq, wk, wv = sd[q + "attn.wqkv.weight"].split(
            [a.n_heads * hd, a.n_kv_heads * hd, a.n_kv_heads * hd], dim=0)
        gate, up = sd[q + "mlp.w13.weight"].chunk(2, dim=0)
        out.update({
            p + "input_layernorm.weight": sd[q + "attn_norm.weight"],
            p + "post_attention_layernorm.weight": sd[q + "mlp_norm.weight"],
            p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
            p + "self_attn.v_proj.weight": wv, p + "self_attn.o_proj.weight": sd[q + "attn.wo.weight"],
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": sd[q + "mlp.w2.weight"],
        })
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in out.items()}


def special_tokens(tokenizer_json: Path | None) -> dict[str, tuple[str, int]]:
    """bos/eos/pad tokens found among the tokenizer's added tokens, as {role: (text, id)}."""
    if tokenizer_json is None:
        return {}
    data = json.loads(Path(tokenizer_json).read_text())
    vocab = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    out = {}
    for role, names in (("eos", EOS_NAMES), ("bos", BOS_NAMES), ("pad", PAD_NAMES)):
        for n in names:
            if n in vocab:
                out[role] = (n, vocab[n])
                break
    return out


def hf_config(a: ModelArgs, special: dict) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.dim,
        "intermediate_size": a.ffn_dim,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "vocab_size": a.vocab_size,
        "max_position_embeddings": a.max_seq_len,
        "rms_norm_eps": a.norm_eps,
        "rope_theta": a.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": a.init_std,
        "tie_word_embeddings": a.tie_embeddings,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    for role in ("bos", "eos", "pad"):
        if role in special:
            cfg[f"{role}_token_id"] = special[role][1]
    return cfg


def write_hf(out_dir: str | Path, full_sd: dict[str, torch.Tensor], a: ModelArgs,
             tokenizer_json: str | Path | None = None, seq_len: int | None = None) -> Path:
    """Write the HF folder from a full (unsharded) state dict of our model. Rank 0 only."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = Path(tokenizer_json) if tokenizer_json else None
    if tok is not None and tok.is_dir():
        tok = tok / "tokenizer.json"
    if tok is not None and not tok.exists():
        raise FileNotFoundError(f"tokenizer {tok} not found (set data.tokenizer or fix the plan's tokenizer)")
    special = special_tokens(tok)
    save_file(hf_state_dict(full_sd, a), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config(a, special), indent=1))
    gen = {k: v[1] for k, v in ((f"{r}_token_id", special.get(r)) for r in ("bos", "eos", "pad")) if v}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1))
    if tok is not None:
        shutil.copyfile(tok, tmp / "tokenizer.json")
        tcfg = {"tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": seq_len or a.max_seq_len, "clean_up_tokenization_spaces": False}
        for role in ("bos", "eos", "pad"):
            if role in special:
                tcfg[f"{role}_token"] = special[role][0]
        (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def export_model(model, out_dir: str | Path, a: ModelArgs, tokenizer_json=None, seq_len=None,
                 stage_dir: str | Path | None = None) -> Path | str | None:
    """Collective under torch.distributed: gathers the full weights on rank 0 and writes them there.

    `out_dir` may be a URL: the folder is staged in `stage_dir` (default: a temp folder) and uploaded."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        if storage.is_url(out_dir):
            import tempfile
            local = write_hf(Path(stage_dir or tempfile.mkdtemp(prefix="hf-")), sd, a, tokenizer_json, seq_len)
            storage.put_dir(local, str(out_dir), last="config.json", replace=True)
            shutil.rmtree(local, ignore_errors=True)  # the store holds it now
            path = str(out_dir)
        else:
            path = write_hf(out_dir, sd, a, tokenizer_json, seq_len)
    if dist.is_initialized():
        dist.barrier()
    return path
