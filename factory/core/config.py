"""Load YAML into pydantic models with errors that name the file, the field and the fix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from factory.core.errors import FactoryError

M = TypeVar("M", bound=BaseModel)


def read_text_file(path: str | Path, what: str = "a YAML text file") -> str:
    """A text file's content; a binary or non-UTF-8 file is one error naming it and the fix."""
    p = Path(path)
    if not p.is_file():
        raise FactoryError("file not found" if not p.exists() else "not a file", where=str(p), fix="check the path")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise FactoryError(f"not a UTF-8 text file (byte 0x{raw[e.start]:02x} on line {line})", where=str(p),
                           fix=f"give {what}, saved as UTF-8") from None
    if "\x00" in text:
        raise FactoryError(f"a binary file (NUL byte on line {text.count(chr(10), 0, text.index(chr(0))) + 1})",
                           where=str(p), fix=f"give {what}, saved as UTF-8")
    return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = read_text_file(p)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise FactoryError(f"not valid YAML: {e}", where=str(p), fix="correct the YAML syntax") from None
    if not isinstance(data, dict):
        raise FactoryError("expected a mapping at the top level", where=str(p), fix="write `key: value` pairs")
    return data


def validate(model: type[M], data: dict[str, Any], where: str) -> M:
    """Validate `data` as `model`; the first error becomes one FactoryError naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        fix = "remove it" if err["type"] == "extra_forbidden" else f"see the {model.__name__} fields in the docs"
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise FactoryError(err["msg"] + more, where=where, field=field, fix=fix) from None


def load_config(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    data = read_yaml(path)
    if overrides:
        data = {**data, **overrides}
    return validate(model, data, str(path))


def config_hash(cfg: BaseModel | dict[str, Any]) -> str:
    """A stable hash of a config: the same settings always give the same hash."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
