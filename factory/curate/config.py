"""The curation config: which filters run, how dedup and decontamination are tuned, which executor.

Loaded from YAML (`factory/curate/default.yaml` shows every option). Datatrove's own filters take
their keyword arguments under `options`, checked when the pipeline is compiled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.config import load_config, validate

DEFAULT_YAML = Path(__file__).with_name("default.yaml")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Toggle(_M):
    """A datatrove filter: on or off, with its constructor keyword arguments."""

    enabled: bool = False
    options: dict[str, Any] = Field(default_factory=dict)


class LengthCfg(_M):
    enabled: bool = True
    min_chars: int = Field(50, ge=0)
    max_chars: int = Field(200_000, ge=1)
    min_words: int = Field(10, ge=0)
    max_words: int = Field(50_000, ge=1)


class RefusalCfg(_M):
    """Refusals and assistant chatter, as case-insensitive regexes (multiline: `^` is a line start)."""

    enabled: bool = True
    patterns: list[str] = Field(default_factory=lambda: [
        r"\bas an ai\b",
        r"\bas an? (?:ai )?(?:large )?language model\b",
        r"^\W*(?:sure|certainly|of course|absolutely)[!,.]*\s+(?:here is|here's|here are|i can|i'd be)",
        r"^\W*i (?:cannot|can't|can not|am unable to|won't|will not)\b",
        r"\bi (?:cannot|can't|am unable to) (?:help|assist|provide|fulfil|fulfill|comply|create|generate|write)\b",
        r"^\W*i'?m sorry,? but\b",
        r"\b(?:i hope this helps|let me know if you (?:have|need|want|would like))\b",
    ])


class CommentaryCfg(_M):
    """Text about the task or to the user anywhere in a document (case-insensitive regexes, `^` a
    line start). A match in a short first or last line is cut and noted in `meta.extra.stripped`
    (`strip`); anywhere else it rejects the document."""

    enabled: bool = True
    strip: bool = True
    edge_words: int = Field(40, ge=1, description="a first or last line this short may be cut")
    min_words_left: int = Field(20, ge=0, description="fewer words left after cutting: reject")
    patterns: list[str] = Field(default_factory=list)


META_PATTERNS = [
    r"\bhere(?:'s| is| are)\b[^.!?\n]{0,40}\b(?:version|rewrite|summary|revision|draft|rewritten|revised|reformatted|study guide|lesson|possible answer|textbook section)\b",
    r"\b(?:the|this|that|your) (?:original|source|given|provided|above|following) (?:text|passage|article|source|paragraph|content|draft|information)\b",
    r"\b(?:the|this|that) (?:passage|source text|draft|rubric|critique)\b",
    r"\b(?:this|the) article (?:aims|will|presents|explores|provides|discusses|covers)\b|\bin this article\b",
    r"\b(?:the|this) text (?:above|below|is about|describes|provides|tells|speaks)\b",
    r"^\W*(?:(?:the )?source(?: text)?(?: is)?|original text|rewritten\b[^:\n]{0,40}|revised\b[^:\n]{0,40}|rewrite)\s*:",
    r"\bi(?:'ve| have)? (?:rewritten|reformatted|revised|simplified|restructured|rephrased|condensed|summarized|kept|added|removed|included|tried|made sure)\b",
    r"\bi(?:'ve| have)? made (?:several |some |a few |the following )?changes\b",
    r"\b(?:i'll|i will|let me|i'm going to) (?:provide|rewrite|reformat|revise|summarize|create|write|give you|break|explain|start|begin|help)\b",
    r"\b(?:rewrite|revise|reformat|distill) the (?:source|text|passage|article|draft)\b",
    r"\b(?:add|adds|adding) no new claims\b|\bkeep(?:ing)? every fact\b|\bplain (?:encyclopedic )?english\b",
    r"\b(?:in this|this) (?:rewrite|revision|revised version|rewritten version|response)\b",
    r"\b(?:revised|rewritten|improved|final|updated) (?:version|draft|text|article)\s*:",
    r"\b(?:this|the) exercise (?:is designed|requires|asks)\b",
    r"\b(?:the|these|my|your) instructions\b|\bthe requested (?:layout|format|length|style)\b",
    r"\bword count\b|\(\s*\d+ words\s*\)",
]

CHATTER_PATTERNS = [
    r"^\W*(?:sure|certainly|of course|absolutely|great|okay|ok)\b[!,.]",
    r"\bi hope (?:this|that|these|you)\b",
    r"\blet me know\b",
    r"\bfeel free to\b",
    r"\bhappy (?:learning|reading|studying|exploring|coding)\b",
    r"\b(?:great|good|excellent|interesting) question\b",
    r"\bthank(?:s| you) for (?:asking|reading|your|the)\b",
    r"\bif you have any (?:other |more |further )?questions\b",
    r"\bi(?:'d| would)? be (?:happy|glad) to\b",
    r"\bis there anything else\b",
    r"\bgood luck\b",
    r"\b(?:to answer|answering) your question\b|\bplease provide\b|\bwe invite you\b",
    r"\bi(?:'m| am) glad\b|^\W*what an? (?:great|beautiful|wonderful|fun) (?:challenge|exercise|question)\b",
]


class FaithfulnessCfg(_M):
    """Names, numbers and dates of a document that its seed (looked up by `meta.seed_id`) does not
    support. Documents whose seed is not found, and the recipes in `skip_recipes`, are not checked."""

    enabled: bool = True
    seeds: list[str] = Field(default_factory=list,
                             description="seed stage folders; empty: the folders in dedup.reference")
    max_unsupported: float = Field(0.25, ge=0, le=1, description="reject above this share of unsupported spans")
    min_unsupported: int = Field(2, ge=1, description="and at least this many of them")
    skip_recipes: list[str] = Field(default_factory=lambda: ["exercises", "code_tests", "instruction_reversal"])
    max_novelty: float = Field(0.3, ge=0, le=1, description="reject above this share of content words the seed never uses")
    novelty_per_recipe: dict[str, float] = Field(default_factory=lambda: {"textbook": 0.6, "discussion": 0.6},
                                                 description="max_novelty for recipes that add examples")


class QualityCfg(_M):
    """The hashed n-gram quality classifier: its score goes to `meta.extra.quality`; below
    `threshold` the document is rejected. `model`: weights from `python -m factory.curate.quality train`."""

    enabled: bool = False
    model: str = ""
    threshold: float = Field(0.6, ge=0, le=1, description="chosen by 2-fold cross-validation on the dev labels")


JUDGE_RUBRIC = """Source passage:
{{ seed }}

Document written from it ({{ recipe }}):
{{ document }}

Rate the document from 1 to 5 for a pretraining corpus: 5 if every claim agrees with the source
and it reads as a finished text with no talk about the task; 1 if it invents or contradicts facts,
talks about the task or to a user, or stops mid-sentence. Reply with one line of reasons, then a
last line "Score: N"."""


class JudgeCfg(_M):
    """An LLM judge through the teacher client (OpenAI-compatible endpoints): a rubric over each
    document and its seed, the score in `meta.extra.judge`, cached under `cache_dir`."""

    enabled: bool = False
    teacher: dict[str, Any] = Field(default_factory=dict, description="a teacher config with `endpoints`")
    rubric: str = JUDGE_RUBRIC
    min_score: int = Field(4, ge=1, le=5, description="reject below this score")
    on_unparsed: Literal["keep", "drop"] = "keep"
    cache_dir: str = Field("", description="where verdicts are cached; empty: <output>/judge_cache")
    batch: int = Field(8, ge=1, description="documents judged at once per task")


class TruncatedCfg(_M):
    enabled: bool = True
    finish_reasons: list[str] = Field(default_factory=lambda: ["length"])


class LeakageCfg(_M):
    """Prompt or template text that leaked into the output."""

    enabled: bool = True
    patterns: list[str] = Field(default_factory=lambda: [
        r"\{\{|\}\}|\{%|%\}|\{#|#\}",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>",
        r"\[/?INST\]|<</?SYS>>",
        r"^\s*(?:system|user|assistant)\s*:",
    ])
    instruction_phrases: list[str] = Field(default_factory=list, description="phrases that must never appear")
    recipe_phrases: bool = Field(True, description="also the literal instruction sentences of each doc's recipe")
    min_phrase_words: int = Field(6, ge=3)


class VerificationCfg(_M):
    """Drop documents whose `meta.extra.verdicts` hold a failed verdict (False, 'fail', ...)."""

    enabled: bool = True
    fail_values: list[str] = Field(default_factory=lambda: ["fail", "failed", "false", "error", "timeout"])


class LanguageCfg(_M):
    enabled: bool = False
    languages: list[str] = Field(default_factory=lambda: ["en"])
    threshold: float = Field(0.65, ge=0, le=1)


class FiltersCfg(_M):
    length: LengthCfg = Field(default_factory=LengthCfg)
    truncated: TruncatedCfg = Field(default_factory=TruncatedCfg)
    verification: VerificationCfg = Field(default_factory=VerificationCfg)
    leakage: LeakageCfg = Field(default_factory=LeakageCfg)
    meta_commentary: CommentaryCfg = Field(default_factory=lambda: CommentaryCfg(patterns=META_PATTERNS))
    chatter: CommentaryCfg = Field(default_factory=lambda: CommentaryCfg(patterns=CHATTER_PATTERNS))
    refusal: RefusalCfg = Field(default_factory=RefusalCfg)
    language: LanguageCfg = Field(default_factory=LanguageCfg)
    # faithful distillations of short seeds run 20-50 words, with few stop words and, in a Q/A pair, the
    # question's words again in the answer: datatrove's web-page defaults dropped them (dev labels)
    gopher_quality: Toggle = Field(default_factory=lambda: Toggle(enabled=True, options={
        "min_doc_words": 20, "min_stop_words": 1}))
    gopher_repetition: Toggle = Field(default_factory=lambda: Toggle(enabled=True, options={
        "top_n_grams": [[2, 0.3], [3, 0.3], [4, 0.3]]}))
    fineweb_quality: Toggle = Field(default_factory=Toggle)
    c4_quality: Toggle = Field(default_factory=Toggle)
    faithfulness: FaithfulnessCfg = Field(default_factory=FaithfulnessCfg)
    quality: QualityCfg = Field(default_factory=QualityCfg)
    judge: JudgeCfg = Field(default_factory=JudgeCfg)


class MinhashCfg(_M):
    """LSH over word n-gram shingles: a pair with Jaccard s is found with 1-(1-s^r)^b (b buckets, r hashes)."""

    enabled: bool = True
    n_grams: int = Field(3, ge=1)
    num_buckets: int = Field(40, ge=1)
    hashes_per_bucket: int = Field(3, ge=1)
    seed: int = 1
    threshold: float = Field(0.3, ge=0, le=1, description="min Jaccard estimated on the whole signature; 0: LSH only")


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
    output: str = ""
    language: str = "en"
    filters: FiltersCfg = Field(default_factory=FiltersCfg)
    dedup: DedupCfg = Field(default_factory=DedupCfg)
    decont: DecontCfg = Field(default_factory=DecontCfg)
    executor: ExecutorCfg = Field(default_factory=ExecutorCfg)
    keep_work: bool = Field(False, description="keep intermediate files (signatures, filtered shards) after success")
    licence: str | None = Field(None, description="the card's licence (default: the licences the inputs declare)")

    @model_validator(mode="after")
    def _bounds(self) -> "CurateConfig":
        f = self.filters.length
        if f.min_chars > f.max_chars or f.min_words > f.max_words:
            raise ValueError("filters.length: min above max")
        return self

    def output_hash_view(self) -> dict[str, Any]:
        """The settings that decide the output (executor placement does not), for the stage folder hash."""
        return self.model_dump(mode="json", exclude={"executor": {"ray", "ray_address", "workers", "cpus_per_task",
                                                                  "mem_per_cpu_gb", "tasks_per_job", "work_dir"},
                                                     "keep_work": True})


def load(path: str | Path | None = None, **overrides: Any) -> CurateConfig:
    """A CurateConfig from YAML (the packaged default when `path` is None), with top-level overrides."""
    if path is None:
        from factory.config import read_yaml

        return validate(CurateConfig, {**read_yaml(DEFAULT_YAML), **overrides}, str(DEFAULT_YAML))
    return load_config(CurateConfig, path, overrides or None)
