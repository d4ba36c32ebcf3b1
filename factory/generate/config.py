"""The generate stage's config, and what of it decides the output (its identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from factory.core.config import load_config
from factory.teacher.config import TeacherConfig


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: str = Field(description="a stage folder of seed rows, a parquet file, or a JSONL file")
    recipes: list[str] = Field(min_length=1, description="recipe names or paths")
    samples_per_seed: int = Field(1, ge=1)
    limit: int | None = Field(None, ge=1, description="use only the first N seeds")
    shards: int = Field(8, ge=1)
    teacher: TeacherConfig | str = Field(description="a TeacherConfig, or the path of its YAML file")
    recipe_sampling: dict[str, Any] = Field(default_factory=dict, description="overrides for every recipe step, e.g. max_tokens")
    out: str
    cache_dir: str | None = Field(None, description="request cache folder, any fsspec URL (default <out>/cache); runs that "
                                     "share one reuse each other's paid completions")
    cache_flush_every: int = Field(64, ge=1, description="on object storage: upload a shard's new completions as one "
                                   "segment every N of them (a lost node repays at most N per shard in flight)")
    cache_flush_bytes: int = Field(4 * 1024 * 1024, ge=1, description="on object storage: ... or every B bytes of them, "
                                   "whichever comes first (a segment's size bound)")
    cache_flush_s: float = Field(30.0, gt=0, description="on object storage: ... and at least every T seconds")
    ray_address: str | None = None
    workers: int = Field(-1, ge=-1, description="Ray actors sending requests; -1: one per node of a Ray cluster (and one "
                         "per 16 endpoints); on this machine alone, with at most 16 endpoints, the driver's own event loop "
                         "without Ray")
    concurrency: int | None = Field(None, ge=1, description="items in flight per worker, a cap (default: twice the "
                                    "adaptive windows, at least 16; 16 with fixed windows)")
    worker_cpus: float = Field(0.25, ge=0)

    @field_validator("workers")
    @classmethod
    def _no_zero_workers(cls, v: int) -> int:
        if v == 0:
            raise ValueError("0 workers would send nothing: give a number of Ray actors, or -1 to let the stage choose")
        return v


def teacher_config(cfg: GenerateConfig, where: str = "generate config") -> TeacherConfig:
    if isinstance(cfg.teacher, TeacherConfig):
        return cfg.teacher
    p = Path(cfg.teacher)
    if not p.is_absolute() and not p.exists() and Path(where).is_file():
        p = Path(where).parent / p  # relative to the generate config
    return load_config(TeacherConfig, p)


def identity(cfg: GenerateConfig, tcfg: TeacherConfig, recipes: list) -> dict[str, Any]:
    """What decides the output (hashed into the manifest), the recipes' file contents included;
    endpoints, limits and workers do not."""
    models = sorted({e.model for e in tcfg.endpoints}) or ["local"]
    return {"seeds": cfg.seeds, "recipes": cfg.recipes, "recipe_sha": [r.content_sha for r in recipes],
            "samples_per_seed": cfg.samples_per_seed, "limit": cfg.limit,
            "shards": cfg.shards, "recipe_sampling": cfg.recipe_sampling, "teacher_models": models,
            "teacher_sampling": tcfg.sampling, "teacher_seed": tcfg.seed, "mode": tcfg.mode}
