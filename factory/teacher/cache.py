"""The request cache: a teacher completion is paid for once, whatever crashes or reruns follow.

Design: one append-only JSONL file per shard under `<out>/cache/`. Each finished completion is
written as one line `{"key", "completion"}` and flushed at once, so a SIGKILL loses at most the
requests in flight (the kernel keeps what was flushed). A torn last line is skipped on load.
The key is a sha of (model, messages, sampling, sample index, seed). Because a shard belongs to
one worker at a time, every file has a single writer and no locks are needed; the key contains
the seed's text, so a completion can only ever be wanted by the shard that made it, which makes
the per-shard files together one cache shared by all workers. Plain files also make the cache
easy to inspect, copy and delete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from factory.schema import sha
from factory.teacher.types import Completion


def request_key(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any], sample: int, seed: int | None) -> str:
    return sha(model, messages, sampling, sample, seed, n=32)


class CompletionCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self._data[rec["key"]] = rec["completion"]
                    except (ValueError, KeyError, TypeError):
                        self.torn_lines += 1
            if self.torn_lines:  # make sure the next append starts on a fresh line
                with open(self.path, "ab") as f:
                    f.write(b"\n")
        self._fh = open(self.path, "ab", buffering=0)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Completion | None:
        rec = self._data.get(key)
        if rec is None:
            return None
        return Completion(**{**rec, "cached": True})

    def put(self, key: str, completion: Completion) -> None:
        rec = {k: v for k, v in completion.to_dict().items() if k != "cached"}
        self._data[key] = rec
        self._fh.write((json.dumps({"key": key, "completion": rec}, ensure_ascii=False) + "\n").encode())

    def close(self) -> None:
        if not self._fh.closed:
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "CompletionCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
