"""What a teacher call returns, and the errors a call can end in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.core.errors import FactoryError


@dataclass
class Completion:
    """One chat completion from the teacher (or from the request cache, then `cached=True`)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:  # not dataclasses.asdict: it deep-copies, once per request
        return {"text": self.text, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "model": self.model, "cached": self.cached}


class TeacherError(Exception):
    """A teacher call that failed for good: a non-retryable answer (4xx) or retries exhausted.

    `retryable` tells whether a later run may succeed (the shard is then left unfinished and
    redone) or whether the request itself is bad (the item is quarantined with `reason`).
    """

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = False, status: int | None = None):
        self.reason, self.detail, self.retryable, self.status = reason, detail, retryable, status
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Deferred(Exception):
    """A request recorded for later (OpenAI Batch API mode): the item is retried once it is answered."""


class EndpointFatal(FactoryError):
    """Nothing sent to this endpoint can succeed (a refused or missing key, an unknown model or path, a
    spent quota, a certificate that does not verify): the run stops at once, its manifest `failed`."""
