"""A mix, declared in YAML: sources, shares or token budgets, epoch limits, phases.

```yaml
name: phi4
total_tokens: 400000          # tokens trained on (targets), over all phases
seq_len: 256
tokenizer: tokenizer.json     # relative paths resolve against the data root (`--data`)
seed: 0
fit: refuse                   # a source over max_epochs: refuse (default) | cap (its share drops, the others
                              # take the rest) | warn (train past it)
sources:
  - {name: web, path: web, kind: web, share: 0.3, max_epochs: 4}
  - {name: synthetic, path: synthetic, kind: synthetic, share: 0.4, max_epochs: 20}
  - {name: rewrite, path: rewrite, kind: rewrite, share: 0.3, max_epochs: 8}
phases:                       # optional; without it there is one phase "main" using the source shares
  - {name: main, fraction: 0.9}                     # no shares: the source shares
  - {name: anneal, fraction: 0.1, shares: {web: 0.5, synthetic: 0.5}}
```

A source takes either a `share` of its phase or a fixed `tokens` budget (budgets come off the
phase first; the shares split the rest). `mix_from_dict` validates the shape with pydantic and
then the meaning (shares sum to 1, known source names, ...) with errors naming the field;
ablation grids build their cells as dicts and call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.core.config import read_yaml, validate
from factory.core.errors import FactoryError

SHARE_TOL = 1e-6
NAME = r"^[A-Za-z0-9_.-]+$"


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME, description="Source name, used in phases and in plan.json.")
    path: str = Field(description="Folder of tokenized .ds shards; relative paths resolve against the data root.")
    kind: str = Field("web", description="web | synthetic | rewrite | code | qa | ...")
    share: float | None = Field(None, description="Share of each phase's tokens (0..1).")
    tokens: int | None = Field(None, description="A fixed token budget instead of a share (single-phase mixes).")
    max_epochs: float | None = Field(None, description="Most passes over this source's unique tokens, all phases together.")


class PhaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    fraction: float | None = Field(None, description="Fraction of total_tokens; give this or tokens.")
    tokens: int | None = Field(None, description="Tokens of this phase; give this or fraction.")
    shares: dict[str, float] | None = Field(None, description="source -> share; omitted: the sources' own shares.")


class MixConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    description: str = ""
    sources: list[SourceSpec] = Field(min_length=1)
    total_tokens: int | None = Field(None, description="Tokens trained on (targets) over all phases.")
    seq_len: int = Field(256, ge=8, description="Tokens per sample (a window holds seq_len+1).")
    tokenizer: str = Field("tokenizer.json", description="tokenizer.json that made the shards.")
    seed: int = 0
    fit: Literal["refuse", "cap", "warn"] = Field(
        "refuse", description="A source over its max_epochs: refuse the plan (default); cap: lower its share to what "
                              "max_epochs allows, the other sources take the rest; warn: train past it and say so.")
    phases: list[PhaseSpec] = Field(default_factory=list)


def _err(what: str, where: str, field: str, fix: str) -> FactoryError:
    return FactoryError(what, where=where, field=field, fix=fix)


def _check_shares(shares: dict[str, float], where: str, field: str) -> None:
    for k, v in shares.items():
        if v < 0 or v > 1:
            raise _err(f"share {v} is outside 0..1", where, f"{field}.{k}", "use a share between 0 and 1")
    total = sum(shares.values())
    if shares and abs(total - 1.0) > SHARE_TOL:
        raise _err(f"shares sum to {total:.6g}, not 1", where, field, "make the shares add up to 1")


def check_mix(cfg: MixConfig, where: str) -> MixConfig:
    """The checks a schema cannot express; each error names the file and the field."""
    names = [s.name for s in cfg.sources]
    for i, s in enumerate(cfg.sources):
        f = f"sources[{i}]"
        if s.name in names[:i]:
            raise _err(f"source name {s.name!r} appears twice", where, f"{f}.name", "give each source its own name")
        if s.max_epochs is not None and s.max_epochs < 0:
            raise _err(f"max_epochs is negative ({s.max_epochs})", where, f"{f}.max_epochs", "use a number >= 0, or leave it out")
        if s.tokens is not None and s.tokens < 0:
            raise _err(f"token budget is negative ({s.tokens})", where, f"{f}.tokens", "use a number >= 0")
        if s.share is not None and s.tokens is not None:
            raise _err("both share and tokens given", where, f, "give a share or a token budget, not both")
        if s.tokens is not None and cfg.phases:
            raise _err("token budgets only work without phases", where, f"{f}.tokens", "use shares inside phases")
    if cfg.total_tokens is not None and cfg.total_tokens <= 0:
        raise _err(f"total_tokens must be positive, got {cfg.total_tokens}", where, "total_tokens", "give a positive count")
    src_shares = {s.name: s.share for s in cfg.sources if s.share is not None}
    budgets = {s.name: s.tokens for s in cfg.sources if s.tokens is not None}
    if not cfg.phases:
        missing = [s.name for s in cfg.sources if s.share is None and s.tokens is None]
        if missing:
            raise _err(f"source {missing[0]!r} has neither share nor tokens", where, f"sources[{names.index(missing[0])}].share",
                       "give each source a share or a token budget")
        _check_shares(src_shares, where, "sources[*].share")
        if cfg.total_tokens is None and src_shares:
            raise _err("total_tokens is missing", where, "total_tokens", "give total_tokens (or --tokens)")
        if cfg.total_tokens is not None and sum(budgets.values()) > cfg.total_tokens:
            raise _err(f"token budgets ({sum(budgets.values())}) exceed total_tokens ({cfg.total_tokens})", where,
                       "total_tokens", "raise total_tokens or lower the budgets")
        if cfg.total_tokens is not None and not src_shares and sum(budgets.values()) != cfg.total_tokens:
            raise _err(f"token budgets sum to {sum(budgets.values())}, total_tokens is {cfg.total_tokens}", where,
                       "total_tokens", "leave total_tokens out or make it the sum of the budgets")
        return cfg
    if cfg.total_tokens is None and any(p.tokens is None for p in cfg.phases):
        raise _err("total_tokens is missing", where, "total_tokens", "give total_tokens, or tokens on every phase")
    seen = set()
    for j, p in enumerate(cfg.phases):
        f = f"phases[{j}]"
        if p.name in seen:
            raise _err(f"phase name {p.name!r} appears twice", where, f"{f}.name", "give each phase its own name")
        seen.add(p.name)
        if (p.fraction is None) == (p.tokens is None):
            raise _err("give exactly one of fraction or tokens", where, f, "set fraction (of total_tokens) or tokens")
        if p.fraction is not None and not 0 < p.fraction <= 1:
            raise _err(f"fraction {p.fraction} is outside (0, 1]", where, f"{f}.fraction", "use a fraction in (0, 1]")
        if p.tokens is not None and p.tokens <= 0:
            raise _err(f"tokens must be positive, got {p.tokens}", where, f"{f}.tokens", "give a positive count")
        shares = p.shares if p.shares is not None else src_shares
        if p.shares is None and len(src_shares) != len(cfg.sources):
            raise _err("phase has no shares and not every source has one", where, f"{f}.shares",
                       "give shares in the phase or on every source")
        for k in shares:
            if k not in names:
                raise _err(f"unknown source {k!r}", where, f"{f}.shares.{k}", f"use one of {names}")
        if not any(v > 0 for v in shares.values()):
            raise _err(f"phase {p.name!r} draws from no source", where, f"{f}.shares",
                       f"give at least one of {names} a share above 0 in this phase, or drop the phase")
        _check_shares(shares, where, f"{f}.shares")
    fractions = [p.fraction for p in cfg.phases if p.fraction is not None]
    if fractions and all(p.fraction is not None for p in cfg.phases) and abs(sum(fractions) - 1) > SHARE_TOL:
        raise _err(f"phase fractions sum to {sum(fractions):.6g}, not 1", where, "phases[*].fraction", "make them add up to 1")
    return cfg


def mix_from_dict(d: dict[str, Any], where: str = "<mix>") -> MixConfig:
    """Validate a mix given as a dict (a YAML file, or one cell of an ablation grid)."""
    return check_mix(validate(MixConfig, d, where), where)


def load_mix(path: str | Path, tokens: int | None = None, **overrides: Any) -> MixConfig:
    """Read a mix YAML; `tokens` overrides total_tokens (and phases given by fraction follow it)."""
    d = read_yaml(path)
    if tokens is not None:
        d["total_tokens"] = tokens
    d.update({k: v for k, v in overrides.items() if v is not None})
    return mix_from_dict(d, str(path))


def phase_shares(cfg: MixConfig) -> list[tuple[str, int | None, float | None, dict[str, float], dict[str, int]]]:
    """The phases as (name, tokens, fraction, shares, budgets); a mix without phases has one, 'main'."""
    if not cfg.phases:
        shares = {s.name: s.share for s in cfg.sources if s.share is not None}
        budgets = {s.name: s.tokens for s in cfg.sources if s.tokens is not None}
        total = cfg.total_tokens if cfg.total_tokens is not None else sum(budgets.values())
        return [("main", total, None, shares, budgets)]
    src_shares = {s.name: s.share for s in cfg.sources if s.share is not None}
    return [(p.name, p.tokens, p.fraction, dict(p.shares if p.shares is not None else src_shares), {}) for p in cfg.phases]


def json_schema() -> dict[str, Any]:
    schema = MixConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Mix"
    return schema
