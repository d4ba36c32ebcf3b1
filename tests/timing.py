"""Where the suite's time goes: per test directory and the slowest tests, from pytest's JUnit XML.

    python -m tests.timing runs/tests/junit.xml [--top 30]

`make test` writes the XML and prints this after the run (pytest's own `--durations` lists the
slowest phases too; this adds the per-directory sums and the wall time of the whole run).
"""

from __future__ import annotations

import argparse
import collections
import xml.etree.ElementTree as ET


def summary(path: str, top: int = 30) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    per_dir: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    tests = []
    for tc in root.iter("testcase"):
        t = float(tc.get("time") or 0.0)
        parts = (tc.get("classname") or "").split(".")
        where = "/".join(parts[:-1]) or parts[0]  # tests/generate for tests.generate.test_resume
        per_dir[where] += t
        count[where] += 1
        tests.append((t, f"{'/'.join(parts)}.py::{tc.get('name')}"))
    tests.sort(reverse=True)
    return {"wall_s": float(suite.get("time") or 0.0) if suite is not None else sum(per_dir.values()),
            "tests": len(tests), "per_dir": [(d, round(per_dir[d], 1), count[d]) for d, _ in per_dir.most_common()],
            "slowest": [(round(t, 1), name) for t, name in tests[:top]]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("junit")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args(argv)
    s = summary(a.junit, a.top)
    print(f"\n{s['tests']} tests in {s['wall_s'] / 60:.1f} min (wall)\n\nper directory (test time, tests):")
    for d, t, n in s["per_dir"]:
        print(f"  {t:8.1f} s  {n:4d}  {d}")
    print(f"\nthe slowest {len(s['slowest'])}:")
    for t, name in s["slowest"]:
        print(f"  {t:8.1f} s  {name}")


if __name__ == "__main__":
    main()
