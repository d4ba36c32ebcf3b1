"""The curation config: which filters run, how dedup and decontamination are tuned, which executor.

Loaded from YAML (`factory/curate/default.yaml` shows every option, and a test checks that it
equals the defaults here). The filters' own config classes and their order are in `registry.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from factory.core.config import read_yaml
from factory.core.errors import FactoryError
from factory.curate.registry import (  # noqa: F401
    CHATTER_PATTERNS,
    FILTERS,
    JUDGE_RUBRIC,
    META_PATTERNS,
    Build,
    CommentaryCfg,
    DatatroveCfg,
    FaithfulnessCfg,
    FiltersCfg,
    JudgeCfg,
    LanguageCfg,
    LeakageCfg,
    LengthCfg,
    QualityCfg,
    RefusalCfg,
    TruncatedCfg,
    VerificationCfg,
)

DEFAULT_YAML = Path(__file__).with_name("default.yaml")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MinhashCfg(_M):
    """LSH over word n-gram shingles: a pair with Jaccard s is found with 1-(1-s^r)^b (b buckets, r hashes)."""

    enabled: bool = True
    n_grams: int = Field(3, ge=1)
    num_buckets: int = Field(40, ge=1)
    hashes_per_bucket: int = Field(3, ge=1)
    seed: int = 1
    threshold: float = Field(0.3, ge=0, le=1, description="min Jaccard estimated on the whole signature; 0: LSH only")
    reference_threshold: float = Field(
        0.7, ge=0, le=1, description="min Jaccard for a synthetic document to go as a copy of a reference (seed, web) "
        "document: a faithful paraphrase of its seed shares fewer shingles than a copy (dev labels)")


class DedupCfg(_M):
    exact: bool = True
    minhash: MinhashCfg = Field(default_factory=MinhashCfg)
    reference: list[str] = Field(
        default_factory=list,
        description="stage folders (web corpus, seeds) indexed for dedup; their documents are never removed",
    )
    report_clusters: int = Field(20, ge=0, description="clusters shown with examples in the report")


class DecontCfg(_M):
    enabled: bool = True
    benchmarks: list[str] = Field(default_factory=list, description="JSONL files or folders of *.jsonl")
    text_fields: list[str] = Field(default_factory=lambda: ["question", "choices", "answer_text", "answer", "text"])
    n_grams: int = Field(13, ge=3)
    min_words: int = Field(8, ge=3, description="benchmark texts shorter than n_grams but this long match whole")
    action: Literal["remove", "flag"] = "remove"


class ExecutorCfg(_M):
    ray: bool = Field(False, description="run on Ray (local `ray.init()` unless `ray_address` is set)")
    ray_address: str | None = None
    tasks: int = Field(2, ge=1, description="datatrove tasks per stage; the kept set does not depend on it")
    workers: int = Field(-1, description="tasks at once; -1: as many as CPUs (on Ray: the cluster's), at most tasks")
    cpus_per_task: int = Field(1, ge=1)
    mem_per_cpu_gb: float = Field(0.5, gt=0)
    tasks_per_job: int = Field(0, ge=0, description="Ray: tasks per actor; 0: spread tasks over the workers")
    work_dir: str | None = Field(None, description="intermediate files, a URL every worker reaches; default: the "
                                 "output's _work/, or this machine's scratch when the output is on an object store "
                                 "and every worker runs here")

    @property
    def use_ray(self) -> bool:
        return self.ray or bool(self.ray_address)


class CurateConfig(_M):
    inputs: list[str] = Field(default_factory=list, description="stage folders or parquet files of document rows")
    out: str = Field("", description="the stage folder to write (any fsspec URL)")
    language: str = "en"
    filters: FiltersCfg = Field(default_factory=FiltersCfg)
    dedup: DedupCfg = Field(default_factory=DedupCfg)
    decont: DecontCfg = Field(default_factory=DecontCfg)
    executor: ExecutorCfg = Field(default_factory=ExecutorCfg)
    keep_work: bool = Field(False, description="keep intermediate files (signatures, filtered shards) after success")
    licence: str | None = Field(None, description="the card's licence (default: the licences the inputs declare)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "output" in data:
            raise PydanticCustomError("renamed", "{msg}", {"msg": OUTPUT_RENAMED, "fix": "write out: PATH"})
        return data

    def output_hash_view(self) -> dict[str, Any]:
        """The settings that decide the output (executor placement does not), for the stage folder hash."""
        return self.model_dump(mode="json", exclude={"executor": {"ray", "ray_address", "workers", "cpus_per_task",
                                                                  "mem_per_cpu_gb", "tasks_per_job", "work_dir"},
                                                     "keep_work": True})


OUTPUT_RENAMED = "the output folder field is now called `out` (as in every other stage)"


def validate_config(data: dict[str, Any], where: str) -> CurateConfig:
    """A CurateConfig from a mapping; the first problem is one FactoryError naming `where`, the
    field and the fix."""
    if isinstance(data, dict) and "output" in data:
        raise FactoryError(OUTPUT_RENAMED, where=where, field="output", fix="rename `output:` to `out:`")
    try:
        return CurateConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        ctx = err.get("ctx") or {}
        if "fix" in ctx:
            what, fix, field = ctx["msg"], ctx["fix"], ctx.get("field", field)
        else:
            what = err["msg"].removeprefix("Value error, ")
            fix = "remove it" if err["type"] == "extra_forbidden" else "see factory/curate/default.yaml for the fields"
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise FactoryError(what + more, where=where, field=field, fix=fix) from None


def load(path: str | Path | None = None, **overrides: Any) -> CurateConfig:
    """A CurateConfig from YAML (the packaged default when `path` is None), with top-level overrides."""
    src = DEFAULT_YAML if path is None else path
    return validate_config({**read_yaml(src), **overrides}, str(src))
