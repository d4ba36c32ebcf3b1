"""The search file: which sources of a base mix vary, within which bounds, toward which target.

```yaml
name: web_syn_rewrite
base_mix: ../phi4.yaml          # relative to this file; one phase
data_root: runs/demo/tokens     # the tokenized folder the proxies train on
vary:                           # the sources whose shares the search sets (the others keep theirs)
  web: {min: 0.2, max: 0.9}
  synthetic: {min: 0.05, max: 0.7, max_epochs: 8}
  rewrite: {min: 0.0, max: 0.4, max_epochs: 8}
target: {wiki_mc: 1.0, arith_mc: 0.5}   # benchmark -> weight (a weighted sum of scores)
maximize: true                  # false for losses
proxies: 24                     # proxy runs (one mix each)
design: space_filling           # or dirichlet
seed: 0
proxy: {model: {preset: tiny}, tokens: 200000, seeds: [0]}
validate: {model: {preset: 20m}, tokens: 2000000, seeds: [0, 1, 2], baselines: [../web_only.yaml, ../phi4.yaml]}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.core.config import load_config


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bound(_M):
    min: float = Field(0.0, ge=0, le=1, description="lowest share")
    max: float = Field(1.0, ge=0, le=1, description="highest share")
    max_epochs: float | None = Field(None, gt=0, description="epochs the mix may draw of this source (the planner's limit)")

    @model_validator(mode="after")
    def _order(self) -> "Bound":
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Scale(_M):
    model: dict[str, Any] = Field(default_factory=lambda: {"preset": "tiny"}, description="the run config's model section")
    tokens: int = Field(gt=0, description="tokens per model")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    run_config: dict[str, Any] = Field(default_factory=dict, description="more trainer settings (train, optim, ...)")
    nproc: int = Field(1, ge=1)


class Validate(Scale):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=3)
    baselines: list[str] = Field(default_factory=list, description="mix files to compare with (relative to this file)")


class SearchConfig(_M):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base_mix: str
    data_root: str
    out: str | None = None
    vary: dict[str, Bound] = Field(min_length=2)
    target: dict[str, float] = Field(min_length=1, description="benchmark name -> weight")
    maximize: bool = True
    proxies: int = Field(24, ge=4)
    design: Literal["space_filling", "dirichlet"] = "space_filling"
    seed: int = 0
    proxy: Scale
    validate_: Validate | None = Field(None, alias="validate")
    benchmarks: dict[str, Any] = Field(default_factory=dict, description="the ablation grid's benchmarks section")
    run_config: dict[str, Any] = Field(default_factory=dict, description="trainer settings for every run")


def load(path: str | Path) -> SearchConfig:
    """A search file, validated; the first problem is one FactoryError naming the file and field."""
    return load_config(SearchConfig, path)
