"""A Llama-style decoder in one file: RMSNorm, RoPE, SwiGLU, grouped-query attention through SDPA.

Weights are laid out for speed (fused q/k/v and gate/up projections); `train.export` splits them
into HuggingFace `LlamaForCausalLM` names, and `load_for_eval` reads such a folder back.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelArgs:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 688
    vocab_size: int = 8192
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def check(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads or self.head_dim % 2:
            raise ValueError(
                f"model: dim={self.dim} must divide into n_heads={self.n_heads} heads of even size, "
                f"and n_heads must be a multiple of n_kv_heads={self.n_kv_heads}")


# Sizes match the published calibration points (the anchor's table) where one exists.
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=688, tie_embeddings=True),
    "20m": dict(dim=512, n_layers=6, n_heads=8, n_kv_heads=8, ffn_dim=1408),  # ~23M with a 4k vocabulary
    "125m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=2048),
    "350m": dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=8, ffn_dim=2816),
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=5632),
}


def model_args(preset: str = "tiny", **overrides) -> ModelArgs:
    """Preset sizes plus field overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    names = {f.name for f in fields(ModelArgs)}
    bad = set(overrides) - names
    if bad:
        raise ValueError(f"model: unknown field(s) {sorted(bad)}; known: {sorted(names)}")
    a = ModelArgs(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
    a.check()
    return a


def rope_tables(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the HF Llama convention); x is [B, H, T, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.h, self.kv, self.hd = a.n_heads, a.n_kv_heads, a.head_dim
        self.wqkv = nn.Linear(a.dim, (self.h + 2 * self.kv) * self.hd, bias=False)
        self.wo = nn.Linear(self.h * self.hd, a.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split([self.h * self.hd, self.kv * self.hd, self.kv * self.hd], dim=-1)
        q = q.view(B, T, self.h, self.hd).transpose(1, 2)
        k = k.view(B, T, self.kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.h * self.hd))


class SwiGLU(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.w13 = nn.Linear(a.dim, 2 * a.ffn_dim, bias=False)  # [gate; up]
        self.w2 = nn.Linear(a.ffn_dim, a.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attn_norm = RMSNorm(a.dim, a.norm_eps)
        self.attn = Attention(a)
        self.mlp_norm = RMSNorm(a.dim, a.norm_eps)
        self.mlp = SwiGLU(a)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        a.check()
        self.args = a
        self.embed = nn.Embedding(a.vocab_size, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.output = nn.Linear(a.dim, a.vocab_size, bias=False)
        if a.tie_embeddings:
            self.output.weight = self.embed.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Normal(0, std) everywhere; residual output projections scaled by 1/sqrt(2 * layers)."""
        std = self.args.init_std
        nn.init.normal_(self.embed.weight, std=std)
        for blk in self.layers:
            for lin in (blk.attn.wqkv, blk.mlp.w13):
                nn.init.normal_(lin.weight, std=std)
            for lin in (blk.attn.wo, blk.mlp.w2):
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.args.n_layers))
        if not self.args.tie_embeddings:
            nn.init.normal_(self.output.weight, std=std)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedding and blocks (no final norm): [B, T, dim]."""
        T = tokens.shape[1]
        cos, sin = rope_tables(T, self.args.head_dim, self.args.rope_theta, tokens.device)
        h = self.embed(tokens)
        cos, sin = cos.to(h.dtype), sin.to(h.dtype)
        for blk in self.layers:
            h = blk(h, cos, sin)
        return h

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Final norm and output head: float32 logits, or the summed cross-entropy given targets."""
        logits = self.output(self.norm(h))
        if targets is None:
            return logits.float()
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] in float32, or, given targets, the summed cross-entropy (ignore_index -100)."""
        return self.head_loss(self.hidden(tokens), targets)

    def num_params(self, embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embedding else n - self.embed.weight.numel()

    def flops_per_token(self, seq_len: int) -> int:
        """6 x (matmul params, the output head included) + 12 x layers x dim x seq (attention)."""
        a = self.args
        n = self.num_params(embedding=False) + (a.vocab_size * a.dim if a.tie_embeddings else 0)
        return 6 * n + 12 * a.n_layers * a.dim * seq_len


# --------------------------------------------------------------------------- loading for eval

def args_from_hf_config(cfg: dict) -> ModelArgs:
    a = ModelArgs(
        dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        ffn_dim=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        rope_theta=float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
        norm_eps=cfg.get("rms_norm_eps", 1e-5), tie_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    a.check()
    return a


def state_from_hf(hf: dict[str, torch.Tensor], a: ModelArgs) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM tensor names -> ours (the inverse of `train.export.hf_state_dict`)."""
    out = {"embed.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    out["output.weight"] = hf["model.embed_tokens.weight"] if a.tie_embeddings else hf["lm_head.weight"]
    for i in range(a.n_layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.attn_norm.weight"] = hf[p + "input_layernorm.weight"]
        out[f"layers.{i}.mlp_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
        out[f"layers.{i}.attn.wqkv.weight"] = torch.cat(
            [hf[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], dim=0)
        out[f"layers.{i}.attn.wo.weight"] = hf[p + "self_attn.o_proj.weight"]
        out[f"layers.{i}.mlp.w13.weight"] = torch.cat(
            [hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]], dim=0)
        out[f"layers.{i}.mlp.w2.weight"] = hf[p + "mlp.down_proj.weight"]
    return out


def load_for_eval(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a trained model for evaluation: `(Transformer in eval mode, tokenizers.Tokenizer or None)`.

    `path` is a run dir (its `hf/` export is read) or an HF export folder, on local disk or at an
    fsspec URL (s3://, gs://: read straight from the store). `model(tokens)` returns float32
    logits [B, T, V]; `model.args` holds the sizes (`max_seq_len`, `vocab_size`).
    """
    from safetensors.torch import load as load_bytes
    from safetensors.torch import load_file

    from train import storage

    p = str(path).rstrip("/") if storage.is_url(path) else Path(path)
    with storage.errors(p):
        if storage.exists(storage.join(p, "hf", "config.json")):
            p = storage.join(p, "hf") if storage.is_url(p) else p / "hf"
        if not storage.exists(storage.join(p, "config.json")):
            raise FileNotFoundError(f"{path}: no config.json here or in hf/ (was the run exported?)")
        a = args_from_hf_config(json.loads(storage.read_text(storage.join(p, "config.json"))))
        hf: dict[str, torch.Tensor] = {}
        files = storage.glob(storage.join(p, "*.safetensors")) if storage.is_url(p) else sorted(p.glob("*.safetensors"))
        for f in files:  # local files are memory-mapped, objects read whole
            hf.update(load_bytes(storage.read_bytes(f)) if storage.is_url(f) else load_file(str(f)))
        tok_json = storage.join(p, "tokenizer.json")
        tok_text = storage.read_text(tok_json) if storage.exists(tok_json) else None
    model = Transformer(a)
    model.load_state_dict(state_from_hf(hf, a))
    model.to(device=device, dtype=dtype).eval()
    tok = None
    if tok_text is not None:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_str(tok_text)
    return model, tok


def describe(a: ModelArgs) -> dict:
    return asdict(a)
