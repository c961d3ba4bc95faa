"""How long the test suite takes, where the time goes, and how busy the machine is meanwhile;
optionally against an earlier commit's suite run the same way on the same machine.

    .venv/bin/python benchmarks/suite_time.py                        # this checkout: tests/
    .venv/bin/python benchmarks/suite_time.py --baseline 10f1fe9     # and version 1's suite
    .venv/bin/python benchmarks/suite_time.py -- tests -m "not slow"  # pytest's arguments

Each suite runs as `python -m pytest tests` (or the arguments after --) with this venv; a
baseline runs from a temporary `git worktree` of its commit, first on PYTHONPATH, so only
the code differs. Per test file: wall seconds and the share of the machine's CPU time left
idle (Linux /proc/stat, all cores), then the totals. The idle share bounds what running
tests side by side could gain: the work itself needs at least wall x (1 - idle) here.
Last line: `suite_seconds: X`, or with --baseline `suite_speedup: baseline / this`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_ENV = "BESTOFL_SUITE_TIME_LOG"


# ------------------------------------------------------------------ the pytest plugin side
def _cpu() -> tuple[int, int]:
    """(idle, total) jiffies of all cores since boot; (0, 0) where /proc/stat is missing."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    return ticks[3] + ticks[4], sum(ticks)  # idle + iowait


def _log(event: str, nodeid: str) -> None:
    idle, total = _cpu()
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(json.dumps({"event": event, "t": time.time(), "idle": idle, "total": total,
                            "test": nodeid}) + "\n")


def pytest_runtest_logstart(nodeid: str, location) -> None:
    _log("start", nodeid)


def pytest_runtest_logfinish(nodeid: str, location) -> None:
    _log("finish", nodeid)


# ------------------------------------------------------------------ the driver side
def run_suite(checkout: Path, pytest_args: list[str], pythonpath: str | None) -> dict:
    """Run one suite; its wall time, outcome line and per-file wall/idle/total."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as log:
        env = {**os.environ, LOG_ENV: log.name}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(Path(__file__).parent),
                                                        env.get("PYTHONPATH")) if p)
        start = time.time()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "suite_time",
                   "-p", "no:cacheprovider", *(pytest_args or ["tests"])]
        done = subprocess.run(command, cwd=checkout, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        wall = time.time() - start
        events = [json.loads(line) for line in log]
    files: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    begun: dict[str, dict] = {}
    for e in events:
        if e["event"] == "start":
            begun[e["test"]] = e
        elif e["test"] in begun:
            s = begun.pop(e["test"])
            row = files[e["test"].split("::")[0]]
            row[0] += e["t"] - s["t"]
            row[1] += e["idle"] - s["idle"]
            row[2] += e["total"] - s["total"]
    lines = done.stdout.strip().splitlines()
    return {"wall": wall, "returncode": done.returncode, "outcome": lines[-1] if lines else "",
            "files": dict(files)}


def show(name: str, suite: dict) -> None:
    print(f"\n{name}: {suite['outcome']} (exit {suite['returncode']}), {suite['wall']:.0f} s "
          f"wall with collection and start-up")
    print(f"  {'seconds':>8} {'idle %':>7}  test file")
    idle = total = 0
    for file, (seconds, i, t) in sorted(suite["files"].items(), key=lambda kv: -kv[1][0]):
        idle, total = idle + i, total + t
        if seconds >= 1:
            print(f"  {seconds:8.1f} {100 * i / t if t else float('nan'):7.1f}  {file}")
    if total:
        share = idle / total
        print(f"  machine idle {100 * share:.1f} % of the test time: the same work needs at "
              f"least {suite['wall'] * (1 - share):.0f} s here, however it is scheduled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a commit whose suite to time the same way first")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()

    baseline = None
    if args.baseline:
        # Beside this checkout, so its tests find ../shared/data as ours do.
        tree = Path(tempfile.mkdtemp(prefix=".suite-baseline-", dir=ROOT.parent))
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.baseline],
                       cwd=ROOT, check=True)
        try:
            baseline = run_suite(tree, args.pytest_args, pythonpath=str(tree))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
        show(f"baseline {args.baseline}", baseline)
    current = run_suite(ROOT, args.pytest_args, pythonpath=None)
    show("this checkout", current)
    if baseline:
        print(f"suite_speedup: {baseline['wall'] / current['wall']:.3f}")
    else:
        print(f"suite_seconds: {current['wall']:.0f}")


if __name__ == "__main__":
    main()
