"""Run every benchmark script here that defines `main` (or the ones named), one after another.

    python benchmarks/run_all.py [train_mfu train_scaling ...]

Each script prints its anchor, our figure and the ratio, and writes benchmarks/results/*.json.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def scripts(names: list[str]) -> list[Path]:
    """The named scripts, or every one with a `main` (GPU ones only where CUDA is present)."""
    if names:
        return [HERE / (n if n.endswith(".py") else n + ".py") for n in names]
    gpu = _cuda()
    found = []
    for p in sorted(HERE.glob("*.py")):
        text = p.read_text()
        if p.name == Path(__file__).name or "def main" not in text or "\nRUN_ALL = False" in text:
            continue
        if "\nNEEDS_GPU = True" in text and not gpu:
            print(f"== {p.stem}: skipped (needs a CUDA device; run it on a GPU host)")
            continue
        found.append(p)
    return found


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    failed = []
    sys.path.insert(0, str(HERE))
    for path in scripts(names):
        if not path.exists():
            print(f"== {path.stem}: no such benchmark")
            failed.append(path.stem)
            continue
        print(f"== {path.stem}", flush=True)
        t0 = time.time()
        try:
            spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            rc = mod.main([])
        except SystemExit as e:
            rc = e.code
        except Exception:
            traceback.print_exc()
            rc = 1
        print(f"== {path.stem}: {'ok' if not rc else f'failed ({rc})'} in {time.time() - t0:.0f}s", flush=True)
        if rc:
            failed.append(path.stem)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
