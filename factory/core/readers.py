"""Input rows from JSONL and parquet files (any fsspec URL), bad rows kept apart with a reason.

JSONL is split on bytes (`\\n`, `\\r\\n`), so a line that is not UTF-8 costs that line only, and the
line numbers are the ones an editor shows. Each bad line becomes a quarantine record
`{"line": N, "reason": ..., "detail": "line N: ...", "raw": ...}`; the good rows go on.
"""

from __future__ import annotations

import io
import json
from typing import Any

from factory.core.errors import FactoryError
from factory.core.stage import read_bytes


def bad_row(line: int, reason: str, problem: str, raw: str = "", unit: str = "line") -> dict[str, Any]:
    return {"line": line, "reason": reason, "detail": f"{unit} {line}: {problem}"[:300], "raw": raw[:500]}


def read_jsonl(url: str) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """([(line number, object)], [quarantine records]) of a JSONL file; blank lines are skipped."""
    good, bad = [], []
    for n, raw in enumerate(read_bytes(url).splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append(bad_row(n, "bad_utf8", f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8",
                               raw.decode("utf-8", "replace")))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:  # its own "line 1" would contradict the file's line number
            bad.append(bad_row(n, "bad_json", f"not JSON ({e.msg} at column {e.colno})", line))
            continue
        if not isinstance(obj, dict):
            bad.append(bad_row(n, "bad_json", f"not a JSON object (a {type(obj).__name__})", line))
            continue
        good.append((n, obj))
    return good, bad


def read_parquet(url: str, field: str) -> list[tuple[int, dict[str, Any]]]:
    """[(row number, row)] of a parquet file; a file that is not parquet is one error naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = read_bytes(url)
    try:
        rows = pq.ParquetFile(io.BytesIO(data)).read().to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise FactoryError(f"not a readable parquet file ({str(e).splitlines()[0][:160]})", where=url, field=field,
                           fix="give a parquet file, or a .jsonl file with one JSON object per line") from None
    return list(enumerate(rows, 1))
