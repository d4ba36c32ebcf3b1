"""Ablation grids: the YAML schema (GridConfig) and its expansion into cells (one mix each).

A field path walks the mix: dict keys, list items by `name` (sources.synthetic) or index.
`scales` names model sizes and token budgets (a small and a large scale): every cell is run at
each, and the report says how well the small scale's ranking of the mixes predicts the large one's.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from factory.core.config import read_yaml, validate
from factory.core.errors import FactoryError
from factory.evaluate.sets import BUILTIN, TRAINING_FREE


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    builtin: list[str] = Field(default_factory=lambda: list(TRAINING_FREE))
    n: int = Field(500, ge=1, description="items per built-in benchmark")
    seed: int = 0
    files: list[str] = Field(default_factory=list, description="more benchmark folders or lm-eval style JSONL files")
    holdout_titles: list[str] = Field(default_factory=list, description="wiki titles kept out of training (wiki_val)")
    holdout_titles_file: str | None = Field(None, description="the same, one title a line (relative to data_root)")
    titles_file: str | None = Field(None, description="knowledge items only from these titles, one a line (relative to data_root)")
    titles_from: str | None = Field(None, description="or from the wiki titles of a stage folder of documents (relative to data_root)")
    source_loss: bool = Field(True, description="also report the loss on the tail windows of each source")
    source_windows: int = 32

    @field_validator("builtin")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if b not in BUILTIN]
        if bad:
            raise ValueError(f"unknown built-in benchmark(s) {bad}; pick from {list(BUILTIN)}")
        return v


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_items: int | None = None
    batch_size: int = 32


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: str | None = None
    group: str | None = None
    title: str = ""
    notes: str = ""


class SubsetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="a tokenized source folder under data_root")
    fraction: float = Field(gt=0, le=1, description="share of its documents (the first ones) to keep")


class ScaleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: dict[str, Any] = Field(description="model section of the run config, e.g. {preset: 20m}")
    tokens: int = Field(gt=0, description="total_tokens of every cell at this scale")
    run_config: dict[str, Any] = Field(default_factory=dict, description="trainer settings for this scale (merged over the grid's)")


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    base_mix: str
    data_root: str
    out: str | None = None
    tokens: int | None = Field(None, gt=0, description="total_tokens of every cell")
    seeds: list[int] = Field(min_length=1)
    model: dict[str, Any] = Field(default_factory=lambda: {"preset": "tiny"})
    run_config: dict[str, Any] = Field(default_factory=dict, description="trainer run-config sections (train, optim, ...)")
    nproc: int = 2
    vary: list[dict[str, list[Any]]] | dict[str, list[Any]] = Field(min_length=1)
    mode: Literal["cartesian", "zip"] = Field("cartesian", description="how fields combine when vary is one mapping")
    labels: dict[str, str] = Field(default_factory=dict, description="field path -> short name in tables")
    drop_zero_shares: bool = Field(True, description="leave sources with share 0 out of a cell's mix")
    fit: Literal["refuse", "cap", "warn"] | None = Field(None, description="every cell's `fit` (a source over its "
                                                         "max_epochs); default: the base mix's")
    subsets: dict[str, SubsetConfig] = Field(default_factory=dict, description="smaller copies of a source, made in data_root")
    benchmarks: BenchConfig = Field(default_factory=BenchConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    parallel: Literal["auto", "serial", "ray"] = "auto"
    scales: dict[str, ScaleConfig] = Field(default_factory=dict, description="e.g. {small: {model: {preset: 20m}, "
                                           "tokens: 2000000}, large: {...}}: every cell at each scale")
    pack: int | Literal["auto"] = Field("auto", description="runs side by side on one GPU (lanes per GPU); auto: "
                                        "from the model size and tokens per step")
    lanes: int = Field(1, ge=1, description="lanes side by side on a machine without GPUs")


def scaled(cells: list[dict], g: GridConfig) -> list[dict]:
    """Each cell once per scale (id `scale=<name>__<id>`, param `scale`), with that scale's tokens;
    the cells as they are when the grid names no scales."""
    if not g.scales:
        return cells
    out = []
    for name, s in g.scales.items():
        for c in cells:
            mix = {**copy.deepcopy(c["mix"]), "total_tokens": s.tokens}
            mix["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{g.name}.{name}.{c['id']}")[:120]
            out.append({**c, "id": f"scale={name}__{c['id']}", "scale": name, "mix": mix,
                        "params": {"scale": name, **c["params"]}})
    return out


def label(path: str, labels: dict[str, str]) -> str:
    return labels.get(path) or re.sub(r"^sources_", "", path.replace(".", "_"))


def load_grid(path: str | Path) -> GridConfig:
    return validate(GridConfig, read_yaml(path), str(path))


def _groups(g: GridConfig, where: str) -> list[dict[str, list[Any]]]:
    if isinstance(g.vary, dict):
        groups = [g.vary] if g.mode == "zip" else [{k: v} for k, v in g.vary.items()]
    else:
        groups = g.vary
    for i, grp in enumerate(groups):
        lens = {k: len(v) for k, v in grp.items()}
        if not grp or 0 in lens.values():
            raise FactoryError("a vary group lists no values", where=where, field=f"vary[{i}]", fix="give each field a list of values")
        if len(set(lens.values())) > 1:
            raise FactoryError(f"zipped fields have different lengths {lens}", where=where, field=f"vary[{i}]",
                               fix="give zipped fields lists of the same length, or put them in separate groups")
    return groups


def _walk(d: Any, path: str, where: str, base: str) -> tuple[Any, str]:
    """The container holding the last key of `path`, and that key; errors name the grid field."""
    parts = path.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            hit = [x for x in node if isinstance(x, dict) and x.get("name") == p]
            if not hit and p.isdigit() and int(p) < len(node):
                hit = [node[int(p)]]
            if not hit:
                names = [x.get("name") for x in node if isinstance(x, dict)]
                raise FactoryError(f"'{p}' is not in {'.'.join(parts[:i]) or 'the mix'} of {base} (names: {names})",
                                   where=where, field=f"vary.{path}", fix="use a source name from the base mix")
            node = hit[0]
        elif isinstance(node, dict) and p in node:
            node = node[p]
        else:
            raise FactoryError(f"'{p}' is not a field of the base mix {base}", where=where, field=f"vary.{path}",
                               fix=f"use one of {sorted(node) if isinstance(node, dict) else '(none)'}")
    if not isinstance(node, dict):
        raise FactoryError(f"'{path}' does not name a field of a mapping in {base}", where=where, field=f"vary.{path}",
                           fix="end the path at a field such as sources.<name>.share")
    return node, parts[-1]


def _allowed(path: str, node: dict) -> set[str]:
    """Fields a path may set even when the base mix leaves them out."""
    from factory.mix.spec import MixConfig, PhaseSpec, SourceSpec

    parts = path.split(".")
    if len(parts) == 1:
        return set(MixConfig.model_fields)
    if parts[0] == "sources" and len(parts) == 3:
        return set(SourceSpec.model_fields)
    if parts[0] == "phases" and len(parts) == 3:
        return set(PhaseSpec.model_fields)
    if parts[0] == "phases" and len(parts) == 4 and parts[2] == "shares":
        return set(node) | {"*"}
    return set()


def expand(grid_path: str | Path, g: GridConfig | None = None) -> list[dict[str, Any]]:
    """The cells: [{"id", "params": {label: value}, "fields": {path: value}, "mix": mix dict}]."""
    from factory.mix.spec import mix_from_dict

    where = str(grid_path)
    g = g or load_grid(grid_path)
    base_path = (Path(grid_path).parent / g.base_mix).resolve()
    base = read_yaml(base_path)
    groups = _groups(g, where)
    rows = [[{k: v[j] for k, v in grp.items()} for j in range(len(next(iter(grp.values()))))] for grp in groups]
    cells = []
    for combo in itertools.product(*rows):
        fields = {k: v for part in combo for k, v in part.items()}
        mix = copy.deepcopy(base)
        for path, value in fields.items():
            node, key = _walk(mix, path, where, str(base_path))
            allowed = _allowed(path, node)
            if key not in node and key not in allowed and "*" not in allowed:
                raise FactoryError(f"'{key}' is not a field of the mix {base_path}", where=where,
                                   field=f"vary.{path}", fix=f"use one of {sorted(allowed or node)}")
            node[key] = value
        if g.tokens is not None:
            mix["total_tokens"] = g.tokens
        if g.fit is not None:
            mix["fit"] = g.fit
        if g.drop_zero_shares:
            _drop_zero(mix)
        params = {label(p, g.labels): v for p, v in fields.items()}
        cid = "__".join(f"{k}={v}" for k, v in params.items())
        cid = re.sub(r"[^A-Za-z0-9_.=-]+", "-", cid)
        mix["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{g.name}.{cid}")[:120]
        mix_from_dict(mix, f"{where} (cell {cid})")
        cells.append({"id": cid, "params": params, "fields": fields, "mix": mix})
    return cells


def _drop_zero(mix: dict) -> None:
    zero = {s["name"] for s in mix.get("sources", []) if s.get("share") == 0 and not mix.get("phases")}
    if zero and len(zero) < len(mix["sources"]):
        mix["sources"] = [s for s in mix["sources"] if s["name"] not in zero]


