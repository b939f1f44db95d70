"""The test suite under load: `make test`'s pytest run N times in a row while a CPU hog keeps
one core busy (as a CI runner or a laptop shared with other work does). A test that fails only
here is a defect, not noise: it waits on a moment instead of an event.

    python -m tests.bench.under_load [RUNS] [HOGS]    (default 5 runs, 1 hog; `make test-under-load`)

Prints one row per run (passed, failed, duration, the failures' names) and exits non-zero when
any run failed.
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def hog() -> None:
    while True:
        pass


def run_suite(log: str) -> tuple[int, int, float, list[str]]:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"],
        capture_output=True,
        text=True,
    )
    with open(log, "w") as f:  # the whole output, for the failures' tracebacks
        f.write(p.stdout + p.stderr)
    elapsed = time.monotonic() - t0
    tail = p.stdout.splitlines()[-1] if p.stdout else ""
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", tail)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) (failed|error)", tail)) else 0
    names = [
        ln.split(" ", 1)[1].split(" - ")[0]
        for ln in p.stdout.splitlines()
        if ln.startswith(("FAILED ", "ERROR "))
    ]
    if p.returncode not in (0, 1):
        failed = max(failed, 1)
    return passed, failed, elapsed, names


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    hogs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    procs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(hogs)]
    for p in procs:
        p.start()
    t = Table(title=f"the test suite, {runs} runs in a row beside {hogs} CPU hog(s)")
    for col in ("run", "passed", "failed", "duration", "failures"):
        t.add_column(col)
    bad = 0
    try:
        for i in range(1, runs + 1):
            console.print(f"run {i}/{runs}…")
            log = f"{tempfile.gettempdir()}/under-load-run-{i}.log"
            passed, failed, elapsed, names = run_suite(log)
            bad += failed > 0
            t.add_row(str(i), str(passed), str(failed), f"{elapsed:.0f} s", ", ".join(names))
            console.print(f"  {passed} passed, {failed} failed in {elapsed:.0f} s (output: {log})")
            for name in names:
                console.print(f"  FAILED {name}")
    finally:
        for p in procs:
            p.terminate()
    Console().print(t)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
