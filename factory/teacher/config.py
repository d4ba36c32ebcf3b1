"""Teacher configuration (YAML -> pydantic): endpoints, limits, retry policy, sampling, prices.

Secrets never live here: an endpoint names the environment variable that holds its API key.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.core.errors import FactoryError


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(description="OpenAI-compatible base URL, ending in /v1")
    model: str
    api_key_env: str | None = Field(None, description="name of the env var holding the API key (none for a server "
                                    "that checks no key)")
    auth_header: str = Field("Authorization", description="the header carrying the key: Authorization sends "
                             "'Bearer KEY'; another name (e.g. Azure OpenAI's api-key) sends the key as is")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers on every request (no secrets: "
                                    "keys come from api_key_env), e.g. OpenAI-Organization")
    query: dict[str, str] = Field(default_factory=dict, description="query parameters on every request, e.g. "
                                  "{api-version: 2024-10-21} for Azure OpenAI")
    max_in_flight: int | None = Field(None, ge=1, description="overrides TeacherConfig.max_in_flight")

    @model_validator(mode="after")
    def _no_secret_headers(self) -> "Endpoint":
        for name in self.headers:
            if name.lower() in ("authorization", "api-key", "x-api-key", self.auth_header.lower()):
                raise ValueError(f"headers.{name}: a credential does not belong in the config; name the environment "
                                 f"variable that holds it in api_key_env (and the header in auth_header)")
        return self

    def api_key(self, where: str = "teacher config") -> str | None:
        """The key from the environment variable `api_key_env` (None when the endpoint takes none)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise FactoryError(f"environment variable {self.api_key_env} (API key for {self.base_url}) is not set",
                               where=where, field="endpoints.api_key_env",
                               fix=f"export {self.api_key_env}=... before running")
        return key


class RetryPolicy(BaseModel):
    """Exponential backoff with full jitter; Retry-After from the server wins when longer."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(8, ge=1)
    base_s: float = Field(0.5, gt=0)
    max_s: float = Field(30.0, gt=0)
    jitter: float = Field(0.5, ge=0, le=1, description="fraction of the delay drawn at random")
    eject_after: int = Field(5, ge=1, description="consecutive failures that take an endpoint out")
    probe_after_s: float = Field(10.0, gt=0, description="when an ejected endpoint gets a probe request")


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_per_1k: float = Field(0.0, ge=0)
    completion_per_1k: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.prompt_per_1k + completion_tokens / 1000 * self.completion_per_1k


class BatchOptions(BaseModel):
    """OpenAI Batch API mode: upload requests as JSONL, poll, merge results into outputs and cache."""

    model_config = ConfigDict(extra="forbid")
    poll_s: float = Field(30.0, gt=0)
    completion_window: str = "24h"
    max_rounds: int = Field(8, ge=1, description="batch rounds (multi-step recipes need one per step)")


class AdaptiveOptions(BaseModel):
    """Adaptive concurrency (see factory.teacher.adaptive): each endpoint's in-flight window is
    searched during the run, starting from its max_in_flight."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = Field(None, description="default: on, unless rpm or tpm limits are set (a paid API)")
    max_window: int = Field(1024, ge=1, description="the most requests in flight per endpoint")
    min_gain: float = Field(0.05, gt=0, lt=1, description="grow while a larger window raises throughput by this "
                            "fraction of the window's growth (elasticity)")
    epoch: int = Field(16, ge=2, description="requests per measurement (at least a quarter of the window after slow start)")
    headroom: float = Field(2.0, ge=1, description="past the knee (where a larger window stops raising throughput) the "
                            "window settles at this many times it: a queue at the server keeps its batch full")
    sharers: int = Field(1, ge=1, description="clients sharing each endpoint (set per worker by the generate stage)")


class ErrorBudget(BaseModel):
    """A run stops when more than `max_share` of its recent requests (the last `window_s` seconds, at
    least `min_requests` of them) end in errors that retrying does not cure (bad requests, retries
    exhausted): a run going wrong says so early instead of quarantining everything."""

    model_config = ConfigDict(extra="forbid")
    max_share: float = Field(0.05, gt=0, le=1, description="share of failed requests that stops the run")
    window_s: float = Field(300.0, gt=0, description="the recent past the share is measured over")
    min_requests: int = Field(20, ge=1, description="requests in the window before the share is judged")


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoints: list[Endpoint] = Field(default_factory=list)
    local_replicas: int = Field(0, ge=0, description="start N local llama.cpp replicas when no endpoints are given")
    mode: Literal["online", "batch"] = "online"
    max_in_flight: int = Field(4, ge=1, description="concurrent requests per endpoint (the start of an adaptive window)")
    adaptive: AdaptiveOptions = Field(default_factory=AdaptiveOptions)
    rpm: float | None = Field(None, gt=0, description="requests per minute over all endpoints")
    tpm: float | None = Field(None, gt=0, description="tokens (prompt + completion) per minute over all endpoints")
    timeout_s: float = Field(120.0, gt=0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    error_budget: ErrorBudget = Field(default_factory=ErrorBudget)
    sampling: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512})
    seed: int | None = Field(0, description="base seed; each request gets a seed derived from it and the request")
    price: Price = Field(default_factory=Price)
    batch: BatchOptions = Field(default_factory=BatchOptions)

    @model_validator(mode="after")
    def _has_teacher(self) -> "TeacherConfig":
        if not self.endpoints and not self.local_replicas:
            raise ValueError("give at least one endpoint, or local_replicas >= 1")
        if self.mode == "batch" and len(self.endpoints) != 1:
            raise ValueError("batch mode takes exactly one endpoint")
        return self

    def keys(self, where: str = "teacher config") -> dict[str, str]:
        """{api_key_env: its value} for every endpoint that names one, read from this process's environment
        (the driver's), for workers whose environment may lack them (Ray actors on other nodes)."""
        return {e.api_key_env: e.api_key(where) for e in self.endpoints if e.api_key_env}

    @property
    def adaptive_on(self) -> bool:
        a = self.adaptive.enabled
        return (self.rpm is None and self.tpm is None and self.mode == "online") if a is None else a

    def scaled(self, workers: int) -> "TeacherConfig":
        """This config's share for one of `workers` clients running at once (limits split evenly)."""
        if workers <= 1:
            return self
        upd: dict[str, Any] = {"max_in_flight": max(1, -(-self.max_in_flight // workers)),
                               "adaptive": self.adaptive.model_copy(update={
                                   "max_window": max(1, -(-self.adaptive.max_window // workers)),
                                   "sharers": self.adaptive.sharers * workers})}
        if self.rpm:
            upd["rpm"] = self.rpm / workers
        if self.tpm:
            upd["tpm"] = self.tpm / workers
        eps = [e.model_copy(update={"max_in_flight": max(1, -(-e.max_in_flight // workers))}) if e.max_in_flight else e
               for e in self.endpoints]
        return self.model_copy(update={**upd, "endpoints": eps})


def local_config(endpoints: list[str], model: str, api_key_env: str | None = None, **kw: Any) -> TeacherConfig:
    """A TeacherConfig pointing at local servers (e.g. a started LocalTeacher, whose key is in the
    environment variable `LocalTeacher.api_key_env`)."""
    return TeacherConfig(endpoints=[Endpoint(base_url=u, model=model, api_key_env=api_key_env) for u in endpoints], **kw)
