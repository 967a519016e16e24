"""The hot path of two commits, compared by instructions per message.

    .venv/bin/python bench/hot_path_ab.py BASE [NEW] [--messages 2000]

On a machine shared with other work, timings of one process drift by tens of
per cent from run to run, too much to see a change of a few. Instructions
executed do not drift: each commit (NEW defaults to the work tree) runs
bench/hot_path.py's measurement under valgrind's cachegrind, once with
``--messages`` messages (a warm-up round and a measured round) and once with
none, and the difference divided by the messages is the broker's
instructions per message, start-up excluded. Needs valgrind; takes minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the commit's tree: the measurement of bench/hot_path.py, nothing else.
CHILD = """
import os, runpy, sys
sys.argv = ["hot_path.py"]
ns = runpy.run_path("bench/hot_path.py", run_name="bench")
from o2obroker.service.tap import tune_gc
tune_gc()
n = int(os.environ["HOT_PATH_MESSAGES"])
if n:
    ns["measure"](n, 500, 1)
"""


def instructions(tree: Path, messages: int) -> int:
    env = dict(os.environ, PYTHONPATH=str(tree), HOT_PATH_MESSAGES=str(messages))
    out = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-c",
            CHILD,
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    found = re.search(r"I\s+refs:\s+([\d,]+)", out)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{out}")
    return int(found.group(1).replace(",", ""))


def per_message(tree: Path, messages: int) -> float:
    # the measurement runs a warm-up round and a measured one: 2 x messages
    return (instructions(tree, messages) - instructions(tree, 0)) / (2 * messages)


def export(rev: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("base", help="a commit: the baseline")
    p.add_argument("new", nargs="?", help="a commit (default: the work tree)")
    p.add_argument("--messages", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base, Path(tmp) / "base")
        new = export(args.new, Path(tmp) / "new") if args.new else ROOT
        figures = {}
        for name, tree in (("base", base), ("new", new)):
            figures[name] = per_message(tree, args.messages)
            print(f"{name:5s} {figures[name]:10,.0f} instructions per message", flush=True)
    print(f"new / base {figures['new'] / figures['base']:6.3f}")


if __name__ == "__main__":
    main()
