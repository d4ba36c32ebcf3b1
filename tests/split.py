"""`make test`: the whole suite as two pytest processes side by side, one per core.

Each lane runs its directories serially in pytest's usual order (so tests that share a session's
teacher, Ray or S3 server keep sharing them, in the order they were written for); the lanes are
balanced by the measured time per directory (`python -m tests.timing`). Both write a JUnit XML
under runs/tests/; at the end the second lane's log follows the first's, then the time per
directory and the slowest tests of both. Extra arguments go to both pytest runs.

    python -m tests.split [-m "not slow"] [-x]
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.timing import main as timing

ROOT = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(r"^([.FEsxX]+)(?: +\[ *\d+%\])?$", re.M)  # pytest -q's progress lines: a character a test
OUT = ROOT / "runs" / "tests"
# test time per directory with both lanes running (2-core VM, 2026-12-08): generate 427 s, cluster 370, the
# top-level end to end tests 320, storage 245, ablate 157, curate 157, train 136, recipes 72, teacher 63,
# foundation 52, mix 15, review 11, seeds 1, evaluate 1: about 1,015 s a lane
LANES = [
    ["tests/generate", "tests/storage", "tests/train", "tests/curate", "tests/mix", "tests/foundation"],
    ["tests/cluster", "tests/test_e2e.py", "tests/test_readme_walkthrough.py", "tests/seeds",
     "tests/ablate", "tests/recipes", "tests/teacher", "tests/evaluate", "tests/review"],
]


def main(argv: list[str]) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    known = {p for lane in LANES for p in lane}
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").iterdir())
               if (p.is_dir() and (p / "__init__.py").exists() or p.name.startswith("test_") and p.suffix == ".py")
               and str(p.relative_to(ROOT)) not in known]
    if missing:
        print(f"tests/split.py: {', '.join(missing)} in no lane: add each to one of LANES", file=sys.stderr)
        return 2
    procs, logs = [], []
    t0 = time.time()
    for k, lane in enumerate(LANES):
        log = open(OUT / f"lane{k}.log", "w")
        # -u: the log is written as the tests go (for this process only: the tests' own subprocesses are as before)
        cmd = [sys.executable, "-u", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={OUT / f'lane{k}.xml'}",
               "--durations=15", *argv, *lane]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
    try:
        while any(p.poll() is None for p in procs):  # a line a minute, so a long run is never silent
            time.sleep(1)
            if int(time.time() - t0) % 60 == 0:
                done = [sum(len(m) for m in PROGRESS.findall((OUT / f"lane{k}.log").read_text(errors="replace")))
                        for k in range(len(LANES))]
                print(f"[{(time.time() - t0) / 60:.0f} min] " + ", ".join(f"lane {k}: {n} done" for k, n in enumerate(done)),
                      flush=True)
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        raise
    finally:
        for log in logs:
            log.close()
    for k in range(len(LANES)):
        print(f"\n===== lane {k}: {' '.join(LANES[k])} (exit {codes[k]}) =====")
        print((OUT / f"lane{k}.log").read_text()[-20000:])
    print(f"\nboth lanes done in {(time.time() - t0) / 60:.1f} min (wall)")
    xmls = [str(OUT / f"lane{k}.xml") for k in range(len(LANES)) if (OUT / f"lane{k}.xml").exists()]
    if xmls:
        timing([*xmls, "--top", "30"])
    # pytest's 5 is "no tests collected" (a lane whose tests were all deselected): not a failure
    return max((0 if c == 5 else c) for c in codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
