"""Where the suite's time goes: per test directory and the slowest tests, from pytest's JUnit XML.

    python -m tests.timing runs/tests/lane0.xml [runs/tests/lane1.xml ...] [--top 30]

`make test` writes the XML and prints this after the run (pytest's own `--durations` lists the
slowest phases too; this adds the per-directory sums and the wall time of the whole run).
"""

from __future__ import annotations

import argparse
import collections
import xml.etree.ElementTree as ET


def summary(paths: list[str], top: int = 30) -> dict:
    """Sums over the files (lanes run side by side: the wall time is the longest lane's)."""
    per_dir: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    tests, walls = [], []
    for path in paths:
        root = ET.parse(path).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        walls.append(float(suite.get("time") or 0.0) if suite is not None else 0.0)
        tests += _cases(root, per_dir, count)
    tests.sort(reverse=True)
    return {"wall_s": max(walls or [0.0]), "tests": len(tests),
            "per_dir": [(d, round(per_dir[d], 1), count[d]) for d, _ in per_dir.most_common()],
            "slowest": [(round(t, 1), name) for t, name in tests[:top]]}


def _cases(root: ET.Element, per_dir: collections.Counter, count: collections.Counter) -> list[tuple[float, str]]:
    tests = []
    for tc in root.iter("testcase"):
        t = float(tc.get("time") or 0.0)
        parts = (tc.get("classname") or "").split(".")
        where = "/".join(parts[:-1]) or parts[0]  # tests/generate for tests.generate.test_resume
        per_dir[where] += t
        count[where] += 1
        tests.append((t, f"{'/'.join(parts)}.py::{tc.get('name')}"))
    return tests


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("junit", nargs="+")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args(argv)
    s = summary(a.junit, a.top)
    print(f"\n{s['tests']} tests; the longest lane {s['wall_s'] / 60:.1f} min\n\nper directory (test time, tests):")
    for d, t, n in s["per_dir"]:
        print(f"  {t:8.1f} s  {n:4d}  {d}")
    print(f"\nthe slowest {len(s['slowest'])}:")
    for t, name in s["slowest"]:
        print(f"  {t:8.1f} s  {name}")


if __name__ == "__main__":
    main()
