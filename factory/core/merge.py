"""The one deep merge of config dicts, for every layer (train's run config, curate's --set, ablation
and search cells). Standard library only: `train/` imports it on a host with torch alone."""

from __future__ import annotations

import copy
from typing import Any


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on `base`, section by section: a mapping over a mapping (or over nothing) merges, anything else
    replaces. Returns a new dict; neither input is changed."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), (dict, type(None))):
            out[k] = deep_merge(out.get(k) or {}, v)
        else:
            out[k] = copy.deepcopy(v)
    return out
